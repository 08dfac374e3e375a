//! `wasmvisor gdb-symbols`: a Linux kernel's symbols for gdb.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use wasmvisor_vmm::config::parse_number;

#[derive(Debug, Args)]
pub struct GdbSymbolsArgs {
    /// The kernel image: a vmlinux, or a bzImage (its payload is unpacked).
    kernel: PathBuf,
    /// The ELF symbol file to write.
    out: PathBuf,
    /// Move every address by this much: the KASLR slide of the running kernel (`add-symbol-file FILE -o SLIDE` does the same in gdb) [default: 0].
    #[arg(long, value_name = "ADDR")]
    slide: Option<String>,
}

pub fn run(args: GdbSymbolsArgs) -> Result<i32> {
    let slide = match &args.slide {
        Some(s) => parse_number(s)?,
        None => 0,
    };
    let n = wasmvisor_vmm::gdb::write_symbol_file(&args.kernel, &args.out, slide)
        .with_context(|| format!("cannot write the symbols of {}", args.kernel.display()))?;
    println!(
        "wrote {n} symbols to {}: in gdb, `add-symbol-file {}`",
        args.out.display(),
        args.out.display()
    );
    Ok(0)
}
