//! Type layouts from the kernel's BTF (`CONFIG_DEBUG_INFO_BTF`).
//!
//! Introspection needs a handful of sizes and member offsets
//! (`task_struct.tasks`, `task_struct.comm`, ...) that change with every
//! kernel build. Stock distribution kernels carry them in a `.BTF` section,
//! so no debug package or compiled profile is needed.
//!
//! Parsing is done by the `btfparse` crate (Apache-2.0, per `cargo info
//! btfparse`). The queries are our own: we index names ourselves (so that a
//! struct wins over a function or variable of the same name), and walk
//! typedefs, qualifiers and anonymous members with a depth limit, because
//! BTF from an untrusted image may contain cycles.

use std::collections::HashMap;

use btfparse::{Offset, Readable, TypeInformation, TypeVariant};

use crate::elf::Elf;
use crate::ProfileError;

/// How many typedefs, qualifiers or nested anonymous members we follow
/// before giving up: far more than C code nests, few enough that a cycle
/// in hostile BTF ends quickly.
const MAX_DEPTH: usize = 32;
/// The size of a pointer on the (64-bit) kernels we read.
const POINTER_SIZE: u64 = 8;
/// `struct btf_header`: magic, version, flags, `hdr_len` and four `u32`s.
const HEADER_SIZE: usize = 24;
const BTF_MAGIC: u16 = 0xeb9f;

/// The sizes and member offsets of a kernel's types.
pub struct Types {
    info: TypeInformation,
    /// Type name to id, for the types one asks about by name.
    by_name: HashMap<String, u32>,
}

impl std::fmt::Debug for Types {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Types")
            .field("types", &self.info.get().len())
            .field("named", &self.by_name.len())
            .finish()
    }
}

/// `btfparse` reads through this trait; ours serves a byte slice and
/// reports reads past its end as errors.
struct Bytes<'a>(&'a [u8]);

impl Readable for Bytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let source = usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(buffer.len())?));
        match source {
            Some(source) => {
                buffer.copy_from_slice(source);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::EOF,
                "read past the end of .BTF",
            )),
        }
    }
}

fn bad(message: impl Into<String>) -> ProfileError {
    ProfileError::BadBtf(message.into())
}

/// Checks the BTF header ourselves so that the errors are readable and no
/// offset arithmetic inside the parser can overflow.
fn check_header(btf: &[u8]) -> Result<(), ProfileError> {
    let field = |at: usize| {
        btf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if btf.len() < HEADER_SIZE {
        return Err(bad(format!(
            "{} bytes are too short for a header",
            btf.len()
        )));
    }
    if u16::from_le_bytes([btf[0], btf[1]]) != BTF_MAGIC {
        return Err(bad("bad magic (or not little-endian)"));
    }
    if btf[2] != 1 {
        return Err(bad(format!("unknown version {}", btf[2])));
    }
    let [Some(hdr_len), Some(type_off), Some(type_len), Some(str_off), Some(str_len)] =
        [4, 8, 12, 16, 20].map(field)
    else {
        return Err(bad("truncated header"));
    };
    let hdr_len = u64::from(hdr_len);
    if hdr_len < HEADER_SIZE as u64 {
        return Err(bad(format!("header length {hdr_len} is too short")));
    }
    let len = btf.len() as u64;
    let types_end = hdr_len + u64::from(type_off) + u64::from(type_len);
    let strings_end = hdr_len + u64::from(str_off) + u64::from(str_len);
    if types_end > len || strings_end > len || types_end > u64::from(u32::MAX) {
        return Err(bad(format!(
            "types or strings end past the section's {len} bytes"
        )));
    }
    Ok(())
}

/// How much we want a type of each kind under its name: a struct or union
/// beats a typedef, which beats the rest (functions, variables and
/// forward declarations are not indexed at all).
fn rank_and_name(variant: &TypeVariant) -> Option<(u8, &Option<String>)> {
    match variant {
        TypeVariant::Struct(t) => Some((0, t.name())),
        TypeVariant::Union(t) => Some((0, t.name())),
        TypeVariant::Typedef(t) => Some((1, t.name())),
        TypeVariant::Enum(t) => Some((2, t.name())),
        TypeVariant::Enum64(t) => Some((2, t.name())),
        TypeVariant::Int(t) => Some((2, t.name())),
        TypeVariant::Float(t) => Some((2, t.name())),
        _ => None,
    }
}

impl Types {
    /// Reads the `.BTF` section of a kernel ELF image.
    pub fn from_elf(image: &[u8]) -> Result<Self, ProfileError> {
        let elf = Elf::parse(image)?;
        let btf = elf.section_bytes(".BTF")?.ok_or(ProfileError::NoBtf)?;
        Self::from_btf(btf)
    }

    /// Reads raw BTF, as in `/sys/kernel/btf/vmlinux` or a `.BTF` section.
    pub fn from_btf(btf: &[u8]) -> Result<Self, ProfileError> {
        check_header(btf)?;
        let info = TypeInformation::new(&Bytes(btf))
            .map_err(|e| bad(format!("{:?}: {}", e.kind(), e.message())))?;
        let mut ranked: HashMap<String, (u8, u32)> = HashMap::new();
        for (&id, variant) in info.get() {
            let Some((rank, Some(name))) = rank_and_name(variant) else {
                continue;
            };
            // Ids ascend, so among equals the first definition stays.
            match ranked.get(name) {
                Some(&(kept, _)) if kept <= rank => {}
                _ => {
                    ranked.insert(name.clone(), (rank, id));
                }
            }
        }
        let by_name = ranked.into_iter().map(|(k, (_, id))| (k, id)).collect();
        Ok(Types { info, by_name })
    }

    /// The type behind `id` once typedefs, `const`, `volatile`, `restrict`,
    /// type tags and forward declarations are looked through.
    fn resolve(&self, mut id: u32) -> Option<&TypeVariant> {
        for _ in 0..MAX_DEPTH {
            let variant = self.info.get().get(&id)?;
            id = match variant {
                TypeVariant::Typedef(t) => *t.tid(),
                TypeVariant::Const(t) => *t.tid(),
                TypeVariant::Volatile(t) => *t.tid(),
                TypeVariant::Restrict(t) => *t.tid(),
                TypeVariant::TypeTag(t) => *t.tid(),
                // A declaration only: use the definition of the same name.
                TypeVariant::Fwd(t) => *self.by_name.get(t.name().as_deref()?)?,
                _ => return Some(variant),
            };
        }
        None
    }

    fn size_of_id(&self, id: u32, depth: usize) -> Option<u64> {
        if depth > MAX_DEPTH {
            return None;
        }
        let size = |s: &usize| u64::try_from(*s).ok();
        match self.resolve(id)? {
            TypeVariant::Struct(t) => size(t.size()),
            TypeVariant::Union(t) => size(t.size()),
            TypeVariant::Int(t) => size(t.size()),
            TypeVariant::Enum(t) => size(t.size()),
            TypeVariant::Enum64(t) => size(t.size()),
            TypeVariant::Float(t) => size(t.size()),
            TypeVariant::Ptr(_) => Some(POINTER_SIZE),
            TypeVariant::Array(a) => self
                .size_of_id(*a.element_tid(), depth + 1)?
                .checked_mul(u64::from(*a.element_count())),
            _ => None,
        }
    }

    /// The size in bytes of the struct, union or typedef (or integer,
    /// enum, float) called `type_name`, such as `task_struct`.
    pub fn size_of(&self, type_name: &str) -> Option<u64> {
        self.size_of_id(*self.by_name.get(type_name)?, 0)
    }

    /// The member `name` of the struct or union `id`, looking inside
    /// anonymous members: its type id and byte offset. `None` for a
    /// bitfield, which has no byte offset.
    fn member(&self, id: u32, name: &str, depth: usize) -> Option<(u32, u64)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let members = match self.resolve(id)? {
            TypeVariant::Struct(t) => t.member_list(),
            TypeVariant::Union(t) => t.member_list(),
            _ => return None,
        };
        let byte_offset = |offset: Offset| match offset {
            Offset::ByteOffset(bytes) => Some(u64::from(bytes)),
            Offset::BitOffsetAndSize(..) => None,
        };
        if let Some(member) = members.iter().find(|m| m.name().as_deref() == Some(name)) {
            return Some((member.tid(), byte_offset(member.offset())?));
        }
        members.iter().filter(|m| m.name().is_none()).find_map(|m| {
            let (id, inner) = self.member(m.tid(), name, depth + 1)?;
            Some((id, byte_offset(m.offset())?.checked_add(inner)?))
        })
    }

    /// The byte offset of a member given as `type.member.member...`, such
    /// as `task_struct.tasks.next`: each step goes into a (possibly
    /// typedef'd) struct or union member, never through a pointer, and
    /// members of anonymous structs and unions are found as C finds them.
    /// `None` when a step does not exist or ends at a bitfield.
    pub fn offset_of(&self, path: &str) -> Option<u64> {
        let mut steps = path.split('.');
        let mut id = *self.by_name.get(steps.next()?)?;
        let mut offset = 0u64;
        let mut any = false;
        for step in steps {
            let (member, at) = self.member(id, step, 0)?;
            offset = offset.checked_add(at)?;
            id = member;
            any = true;
        }
        any.then_some(offset)
    }

    /// How many types the BTF describes.
    pub fn len(&self) -> usize {
        self.info.get().len()
    }

    /// Whether the BTF describes no types at all.
    pub fn is_empty(&self) -> bool {
        self.info.get().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::tiny_elf;

    /// A tiny BTF writer for the tests.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    const INT: u32 = 1;
    const PTR: u32 = 2;
    const ARRAY: u32 = 3;
    const STRUCT: u32 = 4;
    const UNION: u32 = 5;
    const TYPEDEF: u32 = 8;

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size_or_type: u32) {
            let name = self.string(name);
            let info = (kind << 24) | vlen | (u32::from(kflag) << 31);
            for word in [name, info, size_or_type] {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        fn words(&mut self, words: &[u32]) {
            for word in words {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        /// `members`: (name, type, bit offset, bitfield size).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) {
            let kflag = members.iter().any(|m| m.3 != 0);
            self.header(name, kind, members.len() as u32, kflag, size);
            for &(member, id, bits, bitfield) in members {
                let member = self.string(member);
                let offset = if kflag { bits | (bitfield << 24) } else { bits };
                self.words(&[member, id, offset]);
            }
        }

        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let type_len = self.types.len() as u32;
            for word in [24, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// Ids: 1 int, 2 char, 3 list_head, 4 *list_head, 5 char[16],
    /// 6 anonymous struct { pid, tgid }, 7 anonymous union { flags:3, tag },
    /// 8 task_struct, 9 typedef task_t, 10 new_utsname, 11 char[65].
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.header("int", INT, 0, false, 4);
        b.words(&[(1 << 24) | 32]);
        b.header("char", INT, 0, false, 1);
        b.words(&[8]);
        b.composite(
            STRUCT,
            "list_head",
            16,
            &[("next", 4, 0, 0), ("prev", 4, 64, 0)],
        );
        b.header("", PTR, 0, false, 3);
        b.header("", ARRAY, 0, false, 0);
        b.words(&[2, 1, 16]);
        b.composite(STRUCT, "", 8, &[("pid", 1, 0, 0), ("tgid", 1, 32, 0)]);
        b.composite(UNION, "", 4, &[("flags", 1, 0, 3), ("tag", 1, 0, 0)]);
        b.composite(
            STRUCT,
            "task_struct",
            64,
            &[
                ("__state", 1, 0, 0),
                ("", 6, 64, 0),
                ("tasks", 3, 128, 0),
                ("comm", 5, 256, 0),
                ("", 7, 384, 0),
                ("parent", 4, 448, 0),
            ],
        );
        b.header("task_t", TYPEDEF, 0, false, 8);
        b.composite(
            STRUCT,
            "new_utsname",
            390,
            &[("sysname", 11, 0, 0), ("release", 11, 520, 0)],
        );
        b.header("", ARRAY, 0, false, 0);
        b.words(&[2, 1, 65]);
        b.finish()
    }

    #[test]
    fn sizes_and_offsets() {
        let types = Types::from_btf(&sample()).unwrap();
        assert_eq!(types.len(), 11);
        assert_eq!(types.size_of("task_struct"), Some(64));
        assert_eq!(types.size_of("task_t"), Some(64));
        assert_eq!(types.size_of("list_head"), Some(16));
        assert_eq!(types.size_of("int"), Some(4));
        assert_eq!(types.size_of("nope"), None);
        assert_eq!(types.offset_of("task_struct.__state"), Some(0));
        // Inside an anonymous struct at byte 8.
        assert_eq!(types.offset_of("task_struct.pid"), Some(8));
        assert_eq!(types.offset_of("task_struct.tgid"), Some(12));
        assert_eq!(types.offset_of("task_struct.tasks"), Some(16));
        assert_eq!(types.offset_of("task_struct.tasks.prev"), Some(24));
        assert_eq!(types.offset_of("task_t.tasks.next"), Some(16));
        assert_eq!(types.offset_of("task_struct.comm"), Some(32));
        assert_eq!(types.offset_of("task_struct.tag"), Some(48));
        assert_eq!(types.offset_of("new_utsname.release"), Some(65));
        assert_eq!(types.offset_of("list_head.next"), Some(0));
        // A bitfield, a pointer hop, a missing member, a bare type.
        assert_eq!(types.offset_of("task_struct.flags"), None);
        assert_eq!(types.offset_of("task_struct.parent.next"), None);
        assert_eq!(types.offset_of("task_struct.nope"), None);
        assert_eq!(types.offset_of("task_struct"), None);
        assert_eq!(types.offset_of("task_struct..pid"), None);
        assert_eq!(types.offset_of(""), None);
    }

    #[test]
    fn cycles_end() {
        // typedef a -> typedef b -> typedef a; struct s { a x; } via anon loop.
        let mut b = Builder::new();
        b.header("a", TYPEDEF, 0, false, 2);
        b.header("b", TYPEDEF, 0, false, 1);
        b.composite(STRUCT, "s", 8, &[("", 3, 0, 0)]);
        let types = Types::from_btf(&b.finish()).unwrap();
        assert_eq!(types.size_of("a"), None);
        assert_eq!(types.offset_of("s.x"), None);
        assert_eq!(types.offset_of("a.x"), None);
    }

    #[test]
    fn from_elf_finds_the_section() {
        let btf = sample();
        let image = tiny_elf(0xffff_ffff_8200_0000, &btf, &[(".BTF", 0, btf.len())]);
        let types = Types::from_elf(&image).unwrap();
        assert_eq!(types.offset_of("task_struct.comm"), Some(32));
        let without = tiny_elf(0xffff_ffff_8200_0000, &btf, &[(".rodata", 0, btf.len())]);
        assert!(matches!(
            Types::from_elf(&without),
            Err(ProfileError::NoBtf)
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Types::from_elf(&[]).is_err());
        assert!(Types::from_btf(&[]).is_err());
        assert!(matches!(
            Types::from_btf(&[0u8; 64]),
            Err(ProfileError::BadBtf(_))
        ));
        let btf = sample();
        for len in 0..btf.len() {
            let _ = Types::from_btf(&btf[..len]);
        }
        // Any single damaged byte: an error or some answer, never a panic
        // or a hang.
        for at in 0..btf.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = btf.clone();
                damaged[at] ^= flip;
                if let Ok(types) = Types::from_btf(&damaged) {
                    let _ = types.size_of("task_struct");
                    let _ = types.offset_of("task_struct.tasks.next");
                    let _ = types.offset_of("task_struct.pid");
                }
            }
        }
    }
}
