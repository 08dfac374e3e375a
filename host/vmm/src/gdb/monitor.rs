//! gdb's `monitor` commands: what the remote protocol has no packet for.

use crate::units::parse_number;

use super::target::VmTarget;

/// The most bytes `phys read` shows.
const MAX_READ: u64 = 4096;

pub(crate) const HELP: &str = "\
wasmvisor monitor commands:
  help                      this list
  phys read ADDR [LEN]      guest-physical memory, hex (LEN default 64, at most 4096)
  phys write ADDR HEX       write bytes (e.g. 90c3) at a guest-physical address
  translate ADDR            the guest-physical address of a virtual one (the current vCPU's page tables)
  slots                     who holds DR0-3 on each vCPU: gdb, a policy, or nobody
  symbols FILE              write the Linux guest's kallsyms as an ELF for `add-symbol-file FILE`";

/// Runs one command; the reply is gdb's console text.
pub(crate) fn run(target: &mut VmTarget, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] | ["help"] => HELP.to_string(),
        ["phys", "read", addr, rest @ ..] => phys_read(target, addr, rest.first().copied()),
        ["phys", "write", addr, hex] => phys_write(target, addr, hex),
        ["translate", addr] => match parse_number(addr) {
            Ok(gva) => {
                let vcpu = target.current;
                match target.translate(vcpu, gva) {
                    Ok(gpa) => format!("{gva:#x} -> guest-physical {gpa:#x} (vCPU {vcpu})"),
                    Err(e) => format!("error: {e}"),
                }
            }
            Err(e) => format!("error: {e}"),
        },
        ["slots"] => target.slot_report().join("\n"),
        ["symbols", file] => symbols(target, file),
        _ => format!("error: unknown command `{}`\n{HELP}", line.trim()),
    }
}

fn phys_read(target: &VmTarget, addr: &str, len: Option<&str>) -> String {
    let gpa = match parse_number(addr) {
        Ok(a) => a,
        Err(e) => return format!("error: {e}"),
    };
    let len = match len.map(parse_number).transpose() {
        Ok(l) => l.unwrap_or(64),
        Err(e) => return format!("error: {e}"),
    };
    if len == 0 || len > MAX_READ {
        return format!("error: LEN must be 1 to {MAX_READ}");
    }
    match target.read_phys(gpa, len as usize) {
        Ok(bytes) => hexdump(gpa, &bytes),
        Err(e) => format!("error: {e}"),
    }
}

fn phys_write(target: &VmTarget, addr: &str, hex: &str) -> String {
    let gpa = match parse_number(addr) {
        Ok(a) => a,
        Err(e) => return format!("error: {e}"),
    };
    let Some(bytes) = parse_hex(hex) else {
        return "error: HEX must be an even number of hex digits, e.g. 90c3".to_string();
    };
    match target.write_phys(gpa, &bytes) {
        Ok(()) => format!("wrote {} bytes at guest-physical {gpa:#x}", bytes.len()),
        Err(e) => format!("error: {e}"),
    }
}

fn symbols(target: &mut VmTarget, file: &str) -> String {
    let Some((kernel, slide)) = target.kernel() else {
        return "error: this VM has no kernel profile (boot with --kernel, or pass --kernel-profile)"
            .to_string();
    };
    let profile = match kernel.load() {
        Ok(p) => p,
        Err(e) => return format!("error: {e}"),
    };
    let elf = wasmvisor_profile::symfile::symbol_file(&profile.symbols, slide);
    match std::fs::write(file, elf) {
        Ok(()) => format!(
            "wrote {} symbols (slide {slide:#x}) to {file}: load them with `add-symbol-file {file}`",
            profile.symbols.len()
        ),
        Err(e) => format!("error: cannot write {file}: {e}"),
    }
}

/// `bytes` as lines of 16, each with its address.
pub(crate) fn hexdump(base: u64, bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let text: String = chunk
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!(
                "{:#018x}: {:<47}  {text}",
                base + 16 * i as u64,
                hex.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexdump_shows_addresses_bytes_and_text() {
        let dump = hexdump(0x1000, b"minios: booting\n!");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("0x0000000000001000: 6d 69 6e"),
            "{dump}"
        );
        assert!(lines[0].ends_with("minios: booting."), "{dump}");
        assert!(lines[1].starts_with("0x0000000000001010: 21"), "{dump}");
    }

    #[test]
    fn hex_bytes_parse_in_pairs() {
        assert_eq!(parse_hex("90c3"), Some(vec![0x90, 0xc3]));
        assert_eq!(parse_hex("0x00ff"), Some(vec![0, 0xff]));
        assert_eq!(parse_hex("abc"), None);
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(""), None);
    }
}
