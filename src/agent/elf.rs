//! What msb reads of an ELF executable: whether it needs a program interpreter and what machine
//! it is for. The agent must have none and match the guest (see [`super::is_static_executable`]
//! and `publish::agent`).

/// The ELF header fields msb looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elf {
    machine: u16,
    /// Whether a `PT_INTERP` program header names a dynamic loader.
    pub interpreter: bool,
}

impl Elf {
    /// 64-bit little-endian ELF only (the agent's targets); `None` for anything else, including
    /// a file cut short before its program headers end.
    pub fn parse(bytes: &[u8]) -> Option<Elf> {
        const PT_INTERP: u32 = 3;
        let table = ProgramHeaders::of(bytes)?;
        let mut interpreter = false;
        for i in 0..table.count {
            let at = table.offset.checked_add(i.checked_mul(table.entry_size)?)?;
            interpreter |= u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?) == PT_INTERP;
        }
        Some(Elf { machine: u16::from_le_bytes(bytes.get(0x12..0x14)?.try_into().ok()?), interpreter })
    }

    /// How much of the file [`Elf::parse`] needs, known from its first [`Elf::HEADER_LEN`] bytes:
    /// up to the end of the program headers. `None` when those bytes are not a 64-bit
    /// little-endian ELF header.
    pub fn headers_len(header: &[u8]) -> Option<usize> {
        let table = ProgramHeaders::of(header)?;
        table.offset.checked_add(table.count.checked_mul(table.entry_size)?).map(|end| end.max(Self::HEADER_LEN))
    }

    /// The size of a 64-bit ELF header.
    pub const HEADER_LEN: usize = 64;

    /// The OCI name of the ELF machine.
    pub fn architecture(&self) -> Option<&'static str> {
        Some(match self.machine {
            62 => "amd64",
            183 => "arm64",
            243 => "riscv64",
            21 => "ppc64le",
            22 => "s390x",
            _ => return None,
        })
    }
}

/// Where the program header table is, from the ELF header.
struct ProgramHeaders {
    offset: usize,
    entry_size: usize,
    count: usize,
}

impl ProgramHeaders {
    fn of(bytes: &[u8]) -> Option<ProgramHeaders> {
        if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
            return None;
        }
        let u16_at = |at: usize| Some(usize::from(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?)));
        let offset = usize::try_from(u64::from_le_bytes(bytes.get(0x20..0x28)?.try_into().ok()?)).ok()?;
        Some(ProgramHeaders { offset, entry_size: u16_at(0x36)?, count: u16_at(0x38)? })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal 64-bit ELF header with one program header of type `ptype`.
    pub(crate) fn elf(machine: u16, ptype: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        bytes[64..68].copy_from_slice(&ptype.to_le_bytes());
        bytes
    }

    #[test]
    fn reads_the_interpreter_and_the_machine() {
        assert_eq!(Elf::parse(&elf(62, 1)), Some(Elf { machine: 62, interpreter: false }));
        assert_eq!(Elf::parse(&elf(183, 3)).map(|e| (e.interpreter, e.architecture())), Some((true, Some("arm64"))));
        assert_eq!(Elf::parse(&elf(9999, 1)).and_then(|e| e.architecture()), None);
        assert_eq!(Elf::headers_len(&elf(62, 1)[..Elf::HEADER_LEN]), Some(64 + 56), "known from the header alone");
    }

    #[test]
    fn truncated_or_hostile_headers_are_not_elf() {
        assert_eq!(Elf::parse(b"\x7fELF\x02\x01"), None);
        assert_eq!(Elf::parse(b"#!/bin/sh\n"), None);
        let mut cut = elf(62, 3);
        cut.truncate(64 + 2);
        assert_eq!(Elf::parse(&cut), None, "program headers past the end");
        let mut far = elf(62, 3);
        far[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Elf::parse(&far), None, "an offset that overflows");
        assert_eq!(Elf::headers_len(&far), None, "an end that overflows");
        let mut many = elf(62, 3);
        many[0x36..0x38].copy_from_slice(&u16::MAX.to_le_bytes());
        many[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(Elf::parse(&many), None, "headers beyond the bytes read");
        assert_eq!(Elf::headers_len(&many), Some(64 + usize::from(u16::MAX) * usize::from(u16::MAX)), "told, for the caller to bound");
    }
}
