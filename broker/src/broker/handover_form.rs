//! The handover form: how a session's journal records travel between cluster nodes. A form
//! is a version byte, then each record as a little-endian `u32` length and the record's
//! fixed-width journal encoding ([`Record::encode_fixed`], which nodes of older versions
//! read; the compact forms the log uses are decoded too). A session too large for one transport message is split into several
//! forms ([`split_records`]), each a complete form on its own; the receiver applies them
//! in order into one journal [`State`](crate::journal::state::State), so a record may
//! refer to what an earlier form carried (the session opened in the first, a message body
//! before the `Out` records that use it).
//!
//! Besides journal records a form may carry the cluster identity (origin node, sequence)
//! of a handed-over message ([`Entry::Identity`], a tag no journal record uses), right
//! after the message's `Out` record; only a node that asked for identities gets them (an
//! earlier version could not read them). The journal never holds them.
//!
//! A record too large for a form even alone (the body of a message larger than the
//! transport's limit) goes, for a node that asked for them, as *parts*: consecutive
//! entries with another such tag, each a slice of the record's encoding with its offset
//! and the whole length, filling the rest of the current form and as many more as it
//! takes. The receiver ([`FormReader`]) puts them back together, checking that each
//! part continues the one before, and applies the record where it stood. For any other
//! node such a record is left out ([`split_records`]), with what refers to it.
//!
//! This module owns the encoding, the decoding and the split; what the records say and how
//! a session becomes them (and back) is `handover.rs`'s, how forms travel is the cluster's.

use std::collections::HashSet;

use crate::journal::record::{Record, RecordError};

/// Version byte of the handover form.
pub(super) const HANDOVER_VERSION: u8 = 1;
/// Bytes a record adds to a form besides its own encoding (its length).
const RECORD_FRAMING_BYTES: usize = 4;

/// The first byte of an [`Entry::Identity`] in a form (no journal record's tag).
const IDENTITY_TAG: u8 = 0xC1;
/// An [`Entry::Identity`]'s length: its tag and three `u64`.
const IDENTITY_BYTES: usize = 25;

/// The first byte of a part of a record too large for one form (no journal record's tag).
const PART_TAG: u8 = 0xC2;
/// A part's bytes before its slice: its tag, the record's length and the slice's offset
/// (`u32`s, little-endian).
const PART_HEADER_BYTES: usize = 9;
/// Fewest bytes of the record a part carries: with less room left, the form is closed.
const MIN_PART_BYTES: usize = 64;

/// A handed-over message's cluster identity, by the number of its `Out` record in the
/// forms: `(seq, (origin, sequence))`.
pub(super) type Identity = (u64, (u64, u64));

/// One entry of a handover form: a journal record, or the cluster identity of the
/// message whose `Out` record has number `seq` in the forms.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Entry {
    /// A journal record.
    Record(Record),
    /// A message's cluster identity.
    Identity(Identity),
}

/// What a form's entries are made of ([`Record`]s alone, or [`Entry`]s).
pub(super) trait FormItem {
    /// Appends the entry's encoding (without its length).
    fn encode_item(&self, dst: &mut Vec<u8>);
    /// The record it is, if it is one.
    fn record(&self) -> Option<&Record>;
}

impl FormItem for Record {
    fn encode_item(&self, dst: &mut Vec<u8>) {
        self.encode_fixed(dst);
    }
    fn record(&self) -> Option<&Record> {
        Some(self)
    }
}

impl FormItem for Entry {
    fn encode_item(&self, dst: &mut Vec<u8>) {
        match self {
            Entry::Record(record) => record.encode_fixed(dst),
            Entry::Identity((seq, (origin, sequence))) => {
                dst.push(IDENTITY_TAG);
                for n in [seq, origin, sequence] {
                    dst.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
    }
    fn record(&self) -> Option<&Record> {
        match self {
            Entry::Record(record) => Some(record),
            Entry::Identity(_) => None,
        }
    }
}

/// A handed-over session that cannot be put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    /// Not the version this node reads (or empty).
    #[error("unknown handover version")]
    Version,
    /// A record's length runs past the end.
    #[error("handover truncated")]
    Truncated,
    /// A record did not decode.
    #[error("handover record: {0}")]
    Record(#[from] RecordError),
    /// The records hold no session.
    #[error("handover holds no session")]
    NoSession,
    /// Parts of a record that do not continue each other, or that end unfinished.
    #[error("handover record parts do not fit together")]
    Parts,
}

/// `records` in the handover form (one form, however long).
pub(super) fn encode_records(records: &[Record]) -> Vec<u8> {
    let mut out = vec![HANDOVER_VERSION];
    let mut one = Vec::new();
    for record in records {
        one.clear();
        record.encode_fixed(&mut one);
        push_framed(&mut out, &one);
    }
    out
}

fn push_framed(form: &mut Vec<u8>, record: &[u8]) {
    form.extend_from_slice(&(record.len() as u32).to_le_bytes());
    form.extend_from_slice(record);
}

/// The records of a handover form.
///
/// # Errors
/// [`HandoverError`]: another version, a truncated form, a record that does not decode.
#[cfg(test)]
pub(super) fn decode_records(src: &[u8]) -> Result<Vec<Record>, HandoverError> {
    let mut reader = FormReader::default();
    let records = reader.read(src)?;
    reader.finish()?;
    Ok(records)
}

/// Reads a handover's forms in order: their records, the message identities they carry,
/// and records that come in parts (which may span forms).
#[derive(Debug, Default)]
pub(super) struct FormReader {
    /// The message identities read so far.
    identities: Vec<Identity>,
    /// A record coming in parts: its whole length, and its bytes so far.
    part: Option<(usize, Vec<u8>)>,
}

impl FormReader {
    /// The records of the next form (a record in parts once its last part is read).
    ///
    /// # Errors
    /// [`HandoverError`]: another version, a truncated form, an entry that does not
    /// decode, parts that do not continue each other.
    pub(super) fn read(&mut self, src: &[u8]) -> Result<Vec<Record>, HandoverError> {
        let Some((&HANDOVER_VERSION, mut rest)) = src.split_first() else {
            return Err(HandoverError::Version);
        };
        let mut records = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or(HandoverError::Truncated)?;
            let len = u32::from_le_bytes(*len) as usize;
            let entry = tail.get(..len).ok_or(HandoverError::Truncated)?;
            match entry.split_first() {
                Some((&PART_TAG, fields)) => {
                    if let Some(record) = self.part(fields)? {
                        records.push(record);
                    }
                }
                _ if self.part.is_some() => return Err(HandoverError::Parts),
                Some((&IDENTITY_TAG, fields)) if entry.len() == IDENTITY_BYTES => {
                    let n = |i: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&fields[8 * i..8 * i + 8]);
                        u64::from_le_bytes(b)
                    };
                    self.identities.push((n(0), (n(1), n(2))));
                }
                _ => records.push(Record::decode(entry)?),
            }
            rest = &tail[len..];
        }
        Ok(records)
    }

    /// Takes a part (after its tag): the record, once this was its last part.
    fn part(&mut self, fields: &[u8]) -> Result<Option<Record>, HandoverError> {
        let word = |at: usize| -> Option<usize> {
            let b = fields.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let (Some(total), Some(offset)) = (word(0), word(4)) else {
            return Err(HandoverError::Parts);
        };
        let slice = &fields[PART_HEADER_BYTES - 1..];
        let (whole, bytes) = self.part.get_or_insert_with(|| (total, Vec::new()));
        if slice.is_empty() || *whole != total || bytes.len() != offset {
            return Err(HandoverError::Parts);
        }
        if slice.len() > total - offset {
            return Err(HandoverError::Parts);
        }
        bytes.extend_from_slice(slice);
        if bytes.len() < total {
            return Ok(None);
        }
        let (_, bytes) = self.part.take().ok_or(HandoverError::Parts)?;
        Ok(Some(Record::decode(&bytes)?))
    }

    /// The message identities read, once every form is.
    ///
    /// # Errors
    /// [`HandoverError::Parts`]: a record's last part never came.
    pub(super) fn finish(self) -> Result<Vec<Identity>, HandoverError> {
        match self.part {
            Some(_) => Err(HandoverError::Parts),
            None => Ok(self.identities),
        }
    }
}

/// Records split into handover forms by [`split_records`].
#[derive(Debug, Default)]
pub(super) struct Split {
    /// The forms, in order (at least one).
    pub(super) forms: Vec<Vec<u8>>,
    /// Outbound messages left out because a record of theirs (their body) does not fit
    /// in a form of `max_form_bytes` even alone.
    pub(super) dropped_messages: usize,
    /// Other records left out for that reason (the body itself, a subscription).
    pub(super) dropped_records: usize,
}

/// What [`split_records`] has left out so far: whatever refers to it goes too.
#[derive(Default)]
struct LeftOut {
    bodies: HashSet<u64>,
    seqs: HashSet<u64>,
}

impl LeftOut {
    /// Whether `record` refers to something left out (and so goes too), noting it.
    fn follows(&mut self, record: Option<&Record>, split: &mut Split) -> bool {
        let Some(record) = record else {
            return false;
        };
        match record {
            Record::Out(out) if self.bodies.contains(&out.body) => {
                self.seqs.insert(out.seq);
                split.dropped_messages += 1;
                true
            }
            Record::Released { seq, .. } => self.seqs.contains(seq),
            _ => false,
        }
    }

    /// Notes `record`, which is too large for any form.
    fn leave_out(&mut self, record: Option<&Record>, split: &mut Split) {
        match record {
            None => {}
            Some(Record::Body { id, .. }) => {
                self.bodies.insert(*id);
                split.dropped_records += 1;
            }
            Some(Record::Out(out)) => {
                self.seqs.insert(out.seq);
                split.dropped_messages += 1;
            }
            Some(_) => split.dropped_records += 1,
        }
    }
}

/// `records` in handover forms of at most `max_form_bytes` each, in order: a form is
/// closed when the next record would not fit. Applied in order they rebuild what `records`
/// do, since a record only ever refers to earlier ones (its session's opening, its body)
/// and those are in the same or an earlier form.
///
/// A record that does not fit in a form even alone goes in parts when `parts` (the
/// receiver reads them) and `max_form_bytes` leaves room for a part. Otherwise it is left
/// out (counted in the result), and with it what refers to it: a body's `Out` records
/// (its messages), and their `Released` records.
pub(super) fn split_records<R: FormItem>(
    records: &[R],
    max_form_bytes: usize,
    parts: bool,
) -> Split {
    let parts =
        parts && max_form_bytes >= 1 + RECORD_FRAMING_BYTES + PART_HEADER_BYTES + MIN_PART_BYTES;
    let mut split = Split::default();
    let mut left_out = LeftOut::default();
    let mut form = vec![HANDOVER_VERSION];
    let mut one = Vec::new();
    for record in records {
        if left_out.follows(record.record(), &mut split) {
            continue;
        }
        one.clear();
        record.encode_item(&mut one);
        let framed = RECORD_FRAMING_BYTES + one.len();
        if 1 + framed > max_form_bytes {
            if parts && u32::try_from(one.len()).is_ok() {
                push_parts(&mut split.forms, &mut form, &one, max_form_bytes);
            } else {
                left_out.leave_out(record.record(), &mut split);
            }
            continue;
        }
        if form.len() + framed > max_form_bytes {
            split
                .forms
                .push(std::mem::replace(&mut form, vec![HANDOVER_VERSION]));
        }
        push_framed(&mut form, &one);
    }
    if form.len() > 1 || split.forms.is_empty() {
        split.forms.push(form);
    }
    split
}

/// Appends `record` (an encoding of at most `u32::MAX` bytes) as parts: the first fills
/// what is left of `form`, and each form closed on the way goes to `forms`. The caller
/// made sure that an empty form has room for a part of [`MIN_PART_BYTES`].
fn push_parts(forms: &mut Vec<Vec<u8>>, form: &mut Vec<u8>, record: &[u8], max_form_bytes: usize) {
    let total = record.len() as u32;
    let mut offset = 0;
    while offset < record.len() {
        let used = form.len() + RECORD_FRAMING_BYTES + PART_HEADER_BYTES;
        let room = max_form_bytes.saturating_sub(used);
        if room < MIN_PART_BYTES {
            forms.push(std::mem::replace(form, vec![HANDOVER_VERSION]));
            continue;
        }
        let end = (offset + room).min(record.len());
        let entry_bytes = PART_HEADER_BYTES + (end - offset);
        form.extend_from_slice(&(entry_bytes as u32).to_le_bytes());
        form.push(PART_TAG);
        form.extend_from_slice(&total.to_le_bytes());
        form.extend_from_slice(&(offset as u32).to_le_bytes());
        form.extend_from_slice(&record[offset..end]);
        offset = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{OutRecord, StoredMessage};
    use crate::journal::state::State;

    const SESSION: u64 = 1;

    fn open() -> Record {
        Record::SessionOpen {
            session: SESSION,
            client_id: "c".into(),
            expiry_secs: 60,
        }
    }

    fn body(id: u64, payload_bytes: usize) -> Record {
        let publish = tern_codec::Publish::new("t/1", vec![b'x'; payload_bytes]);
        let message = crate::message::Message::new(publish, tokio::time::Instant::now(), None);
        Record::Body {
            id,
            message: crate::journal::stored(&message, tokio::time::Instant::now()),
        }
    }

    fn out(seq: u64, body: u64, packet_id: u16) -> Record {
        Record::Out(Box::new(OutRecord {
            session: SESSION,
            seq,
            qos: 1,
            retain: false,
            packet_id,
            subscription_ids: vec![],
            group: None,
            body,
        }))
    }

    fn encoded_len(record: &Record) -> usize {
        let mut one = Vec::new();
        record.encode_fixed(&mut one);
        one.len()
    }

    /// The state `forms` rebuild, applied in order.
    fn apply(forms: &[Vec<u8>]) -> State {
        let mut state = State::default();
        let mut reader = FormReader::default();
        for form in forms {
            for record in reader.read(form).expect("decodes") {
                state.apply(record);
            }
        }
        reader.finish().expect("no part left over");
        state
    }

    fn payload_of(state: &State, id: u64) -> Option<Vec<u8>> {
        let stored: &StoredMessage = state.bodies.get(&id)?;
        Some(stored.decode_publish()?.payload().to_vec())
    }

    #[test]
    fn handover_form_round_trips_and_rejects_damage() {
        let records = vec![
            open(),
            Record::Subscribe {
                session: SESSION,
                filter: "a/+".into(),
                options: 1,
                subscription_id: 7,
            },
        ];
        let form = encode_records(&records);
        assert_eq!(decode_records(&form).expect("decodes"), records);
        assert_eq!(
            decode_records(&form[..form.len() - 1]),
            Err(HandoverError::Truncated)
        );
        assert_eq!(decode_records(&[]), Err(HandoverError::Version));
    }

    #[test]
    fn records_that_fit_stay_in_one_form_equal_to_the_unsplit_one() {
        let records = vec![open(), body(1, 10), out(1, 1, 0)];
        let whole = encode_records(&records);
        let split = split_records(&records, whole.len(), false);
        assert_eq!(
            split.forms,
            vec![whole.clone()],
            "exactly at the limit: one form"
        );
        let split = split_records(&records, whole.len() - 1, false);
        assert_eq!(split.forms.len(), 2, "one byte less: two forms");
        assert!(split.forms.iter().all(|f| f.len() < whole.len()));
        assert_eq!(split.dropped_messages + split.dropped_records, 0);
    }

    #[test]
    fn no_records_still_make_one_form() {
        let split = split_records::<Record>(&[], 100, true);
        assert_eq!(split.forms, vec![vec![HANDOVER_VERSION]]);
    }

    /// Every form is within the limit and decodes on its own; applied in order they give
    /// the same state as the unsplit records, a body in one form and the `Out` records
    /// that use it in later ones included.
    #[test]
    fn split_forms_rebuild_the_same_state_with_bodies_and_outs_apart() {
        let mut records = vec![open()];
        for i in 1..=20u64 {
            records.push(body(i, 100));
            records.push(out(2 * i - 1, i, 0));
            // A second message sharing the body (another subscription of the session).
            records.push(out(2 * i, i, 0));
        }
        records.push(Record::Released {
            session: SESSION,
            seq: 40,
        });
        let whole = apply(&[encode_records(&records)]);
        let body_len = RECORD_FRAMING_BYTES + encoded_len(&records[1]);
        let out_len = RECORD_FRAMING_BYTES + encoded_len(&records[2]);
        // Room for a body and one Out: the second Out of each body goes to the next form.
        let max = 1 + body_len + out_len;
        let split = split_records(&records, max, false);
        assert!(split.forms.len() >= 20, "{} forms", split.forms.len());
        for form in &split.forms {
            assert!(form.len() <= max, "{} > {max}", form.len());
            decode_records(form).expect("each form decodes alone");
        }
        let first = decode_records(&split.forms[1]).expect("decodes");
        assert!(
            matches!(first[0], Record::Out(_)),
            "a form starting with an Out whose body came earlier: {first:?}"
        );
        let rebuilt = apply(&split.forms);
        assert_eq!(rebuilt.sessions, whole.sessions);
        assert_eq!(rebuilt.bodies, whole.bodies);
        assert_eq!(split.dropped_messages + split.dropped_records, 0);
    }

    /// A body too large for any form is left out with its messages (and their PUBREL
    /// state); the messages around it keep their order.
    #[test]
    fn a_record_larger_than_a_form_goes_with_its_messages_and_says_so() {
        let records = vec![
            open(),
            body(1, 10),
            out(1, 1, 1),
            body(2, 5000),
            out(2, 2, 2),
            Record::Released {
                session: SESSION,
                seq: 2,
            },
            out(3, 2, 0),
            body(3, 10),
            out(4, 3, 0),
        ];
        let split = split_records(&records, 1000, false);
        assert_eq!(split.dropped_messages, 2);
        assert_eq!(split.dropped_records, 1, "the body");
        assert!(split.forms.iter().all(|f| f.len() <= 1000));
        let state = apply(&split.forms);
        let session = &state.sessions[&SESSION];
        assert_eq!(session.outbound.keys().copied().collect::<Vec<_>>(), [1, 4]);
        assert_eq!(payload_of(&state, 1), Some(vec![b'x'; 10]));
        assert_eq!(payload_of(&state, 2), None);
        assert_eq!(payload_of(&state, 3), Some(vec![b'x'; 10]));
    }

    /// The records of `a_record_larger_than_a_form_goes_with_its_messages_and_says_so`,
    /// with message 2's body (5,000 bytes) and its PUBREL state.
    fn with_a_large_body() -> Vec<Record> {
        vec![
            open(),
            body(1, 10),
            out(1, 1, 1),
            body(2, 5000),
            out(2, 2, 2),
            Record::Released {
                session: SESSION,
                seq: 2,
            },
            out(3, 2, 0),
            body(3, 10),
            out(4, 3, 0),
        ]
    }

    /// Decodes `forms` in order with one reader, as `handover.rs` does.
    fn read_all(forms: &[Vec<u8>]) -> Result<(Vec<Record>, Vec<Identity>), HandoverError> {
        let mut reader = FormReader::default();
        let mut records = Vec::new();
        for form in forms {
            records.extend(reader.read(form)?);
        }
        Ok((records, reader.finish()?))
    }

    /// A body too large for any form goes in parts (with `parts`): every form within the
    /// limit, the first part filling the form before it; read back in order they give the
    /// records unchanged, identities included, and the same state, PUBREL state included.
    #[test]
    fn a_record_larger_than_a_form_goes_in_parts_and_comes_back_whole() {
        let records = with_a_large_body();
        let mut entries: Vec<Entry> = records.iter().cloned().map(Entry::Record).collect();
        entries.insert(5, Entry::Identity((2, (7, 99))));
        let split = split_records(&entries, 1000, true);
        assert_eq!(split.dropped_messages + split.dropped_records, 0);
        assert!(split.forms.len() >= 6, "{} forms", split.forms.len());
        assert!(split.forms.iter().all(|f| f.len() <= 1000));
        assert!(
            split.forms[0].len() > 1000 - RECORD_FRAMING_BYTES - PART_HEADER_BYTES - MIN_PART_BYTES
        );
        let (read, identities) = read_all(&split.forms).expect("reads");
        assert_eq!(read, records);
        assert_eq!(identities, vec![(2, (7, 99))]);
        let state = apply(&split.forms);
        let whole = apply(&[encode_records(&records)]);
        assert_eq!(state.sessions, whole.sessions);
        assert_eq!(state.bodies, whole.bodies);
        assert_eq!(payload_of(&state, 2), Some(vec![b'x'; 5000]));
        // Forms too small for a part: left out, as without parts.
        let split = split_records(&records, 70, true);
        assert_eq!(
            split.dropped_messages, 2,
            "the two messages of the large body"
        );
    }

    /// One part's encoding (tag, total, offset, slice) with its length, in a form.
    fn part_form(total: u32, offset: u32, slice: &[u8]) -> Vec<u8> {
        let mut entry = vec![PART_TAG];
        entry.extend_from_slice(&total.to_le_bytes());
        entry.extend_from_slice(&offset.to_le_bytes());
        entry.extend_from_slice(slice);
        let mut form = vec![HANDOVER_VERSION];
        push_framed(&mut form, &entry);
        form
    }

    /// Parts that do not continue each other, end unfinished, are cut short or damaged are
    /// refused with an error (never a panic, never a half record).
    #[test]
    fn damaged_or_missing_parts_are_refused() {
        let records = with_a_large_body();
        let forms = split_records(&records, 1000, true).forms;
        let parts = |e: Result<_, HandoverError>| assert_eq!(e.err(), Some(HandoverError::Parts));
        parts(read_all(&forms[..3]));
        let mut gap = forms.clone();
        gap.remove(2);
        parts(read_all(&gap));
        let mut swapped = forms.clone();
        swapped.swap(2, 3);
        parts(read_all(&swapped));
        parts(read_all(&[
            part_form(10, 0, b"abc"),
            part_form(11, 3, b"def"),
        ]));
        parts(read_all(&[
            part_form(10, 0, b"abc"),
            part_form(10, 4, b"def"),
        ]));
        parts(read_all(&[part_form(10, 3, b"abc")]));
        parts(read_all(&[part_form(2, 0, b"abc")]));
        parts(read_all(&[part_form(0, 0, b"")]));
        parts(read_all(&[part_form(10, 0, b"")]));
        parts(read_all(&[vec![
            HANDOVER_VERSION,
            5,
            0,
            0,
            0,
            PART_TAG,
            1,
            0,
            0,
            0,
        ]]));
        let mut interrupted = part_form(10, 0, b"abc");
        interrupted.extend_from_slice(&encode_records(&[open()])[1..]);
        parts(read_all(&[interrupted]));
        // A whole set of parts that is not a record.
        assert!(read_all(&[part_form(3, 0, b"\xff\xff\xff")]).is_err());
        // Every cut and every flipped byte of a form with parts: an error or records, no panic.
        let form = &forms[1];
        for len in 0..form.len() {
            let _ = read_all(&[forms[0].clone(), form[..len].to_vec()]);
        }
        for at in 0..form.len().min(64) {
            let mut bad = form.clone();
            bad[at] ^= 0xA5;
            let _ = read_all(&[forms[0].clone(), bad]);
        }
    }

    /// Forms carry the fixed-width encoding older nodes read (tags up to 17), not the
    /// log's compact forms, and read back the same; a form holding compact records (a
    /// newer writer) decodes too.
    #[test]
    fn forms_are_written_in_the_encoding_older_nodes_read() {
        let records = vec![
            open(),
            body(3, 10),
            out(1, 3, 7),
            Record::Released {
                session: SESSION,
                seq: 1,
            },
            Record::Done {
                session: SESSION,
                seq: 2,
            },
        ];
        let form = encode_records(&records);
        let mut rest = &form[1..];
        while !rest.is_empty() {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            assert!(rest[4] <= 17, "tag {}", rest[4]);
            rest = &rest[4 + len..];
        }
        assert_eq!(decode_records(&form).expect("decodes"), records);
        let mut compact = vec![HANDOVER_VERSION];
        for record in &records {
            let mut one = Vec::new();
            record.encode(&mut one);
            push_framed(&mut compact, &one);
        }
        assert_eq!(decode_records(&compact).expect("decodes"), records);
    }
}
