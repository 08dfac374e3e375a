//! ELF notes, as a `PT_NOTE` segment holds them.
//!
//! Each note is a 12-byte header (`n_namesz`, `n_descsz`, `n_type`, u32
//! each), the name with its terminating NUL, padded to 4 bytes, and the
//! descriptor, padded to 4 bytes (`Elf64_Nhdr`; the 4-byte alignment is
//! what Linux uses for core files on 64-bit machines too).

use crate::CoreError;

/// `n_type` of a note holding a `struct elf_prstatus` (name `CORE`).
pub const NT_PRSTATUS: u32 = 1;
/// Name of the notes describing a process's (here: a vCPU's) state.
pub const CORE_NAME: &str = "CORE";
/// Name of the note holding the VMCOREINFO text (its `n_type` is 0).
pub const VMCOREINFO_NAME: &str = "VMCOREINFO";
/// `n_type` of the VMCOREINFO note.
pub const VMCOREINFO_TYPE: u32 = 0;
/// Alignment of names and descriptors within a note segment.
pub const NOTE_ALIGN: usize = 4;

/// Size of the note header.
const HEADER_SIZE: usize = 12;

/// One ELF note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The owner's name, without the terminating NUL (`CORE`,
    /// `VMCOREINFO`).
    pub name: String,
    /// The note type (`NT_PRSTATUS`, ...), which the name qualifies.
    pub kind: u32,
    /// The descriptor.
    pub desc: Vec<u8>,
}

fn padded(len: usize) -> usize {
    len.next_multiple_of(NOTE_ALIGN)
}

impl Note {
    /// A note from its parts.
    pub fn new(name: &str, kind: u32, desc: Vec<u8>) -> Self {
        Note {
            name: name.to_owned(),
            kind,
            desc,
        }
    }

    /// Bytes the note takes in a note segment, padding included.
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE + padded(self.name.len() + 1) + padded(self.desc.len())
    }

    /// Appends the note to `out`, padded to [`NOTE_ALIGN`].
    ///
    /// # Panics
    ///
    /// If the name or descriptor is 4 GiB or more, which `Elf64_Nhdr`
    /// cannot count.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let namesz = u32::try_from(self.name.len() + 1).expect("note name under 4 GiB");
        let descsz = u32::try_from(self.desc.len()).expect("note descriptor under 4 GiB");
        out.extend_from_slice(&namesz.to_le_bytes());
        out.extend_from_slice(&descsz.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        let name_at = out.len();
        out.extend_from_slice(self.name.as_bytes());
        out.resize(name_at + padded(self.name.len() + 1), 0);
        let desc_at = out.len();
        out.extend_from_slice(&self.desc);
        out.resize(desc_at + padded(self.desc.len()), 0);
    }
}

/// Encodes notes one after another, as a `PT_NOTE` segment holds them.
pub fn encode_notes(notes: &[Note]) -> Vec<u8> {
    let mut out = Vec::with_capacity(notes.iter().map(Note::encoded_len).sum());
    for note in notes {
        note.encode_into(&mut out);
    }
    out
}

/// Parses the notes of a `PT_NOTE` segment's bytes.
///
/// Names must be NUL-terminated UTF-8; trailing bytes too short for a note
/// header are an error (a segment is made of whole notes).
pub fn parse_notes(mut data: &[u8]) -> Result<Vec<Note>, CoreError> {
    let mut notes = Vec::new();
    while !data.is_empty() {
        let header = data
            .get(..HEADER_SIZE)
            .ok_or_else(|| CoreError::Malformed("a note header is truncated".into()))?;
        let word = |i: usize| {
            u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]) as usize
        };
        let (namesz, descsz, kind) = (word(0), word(4), word(8) as u32);
        let name_end = HEADER_SIZE + namesz;
        let desc_start = HEADER_SIZE + padded(namesz);
        let desc_end = desc_start + descsz;
        let next = (desc_start + padded(descsz)).min(data.len());
        if desc_end > data.len() {
            return Err(CoreError::Malformed(format!(
                "a note (name size {namesz}, descriptor size {descsz}) runs past its segment"
            )));
        }
        let name = match &data[HEADER_SIZE..name_end] {
            [] => "",
            [name @ .., 0] => std::str::from_utf8(name)
                .map_err(|_| CoreError::Malformed("a note name is not UTF-8".into()))?,
            _ => {
                return Err(CoreError::Malformed(
                    "a note name is not NUL-terminated".into(),
                ))
            }
        };
        notes.push(Note::new(name, kind, data[desc_start..desc_end].to_vec()));
        data = &data[next..];
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_padded_to_four_bytes() {
        // "CORE\0" is 5 bytes, padded to 8; a 5-byte descriptor to 8.
        let note = Note::new(CORE_NAME, NT_PRSTATUS, vec![1, 2, 3, 4, 5]);
        let mut bytes = Vec::new();
        note.encode_into(&mut bytes);
        assert_eq!(bytes.len(), 12 + 8 + 8);
        assert_eq!(note.encoded_len(), bytes.len());
        assert_eq!(&bytes[0..12], &[5, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&bytes[12..20], b"CORE\0\0\0\0");
        assert_eq!(&bytes[20..28], &[1, 2, 3, 4, 5, 0, 0, 0]);

        // "VMCOREINFO\0" is 11 bytes, padded to 12.
        let note = Note::new(VMCOREINFO_NAME, VMCOREINFO_TYPE, b"A=1\n".to_vec());
        assert_eq!(note.encoded_len(), 12 + 12 + 4);
    }

    #[test]
    fn notes_round_trip() {
        let notes = vec![
            Note::new(CORE_NAME, NT_PRSTATUS, vec![7; 336]),
            Note::new(CORE_NAME, NT_PRSTATUS, vec![8; 336]),
            Note::new(
                VMCOREINFO_NAME,
                VMCOREINFO_TYPE,
                b"OSRELEASE=6.1.0\nPAGESIZE=4096\n1".to_vec(),
            ),
            Note::new("", 5, Vec::new()),
        ];
        let bytes = encode_notes(&notes);
        assert_eq!(bytes.len() % NOTE_ALIGN, 0);
        assert_eq!(parse_notes(&bytes).unwrap(), notes);
    }

    #[test]
    fn malformed_notes_are_errors() {
        let bytes = encode_notes(&[Note::new(CORE_NAME, NT_PRSTATUS, vec![0; 16])]);
        for len in 1..bytes.len() - 4 {
            // Cut anywhere before the descriptor's end.
            assert!(parse_notes(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut unterminated = bytes.clone();
        unterminated[16] = b'X';
        assert!(parse_notes(&unterminated).is_err());
        let mut huge = bytes;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_notes(&huge).is_err());
    }
}
