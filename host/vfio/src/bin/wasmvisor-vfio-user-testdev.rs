//! Serves wasmvisor's PCI test device over vfio-user on a Unix socket,
//! one client after another, for `--device vfio-user=SOCKET`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wasmvisor_vfio::{TestDeviceBackend, TestDeviceServer};

/// Serve the PCI test device (5741:0002) over vfio-user.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The Unix socket to listen on; it must not exist.
    #[arg(long)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut backend = match TestDeviceBackend::new() {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("wasmvisor-vfio-user-testdev: cannot create the device: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match TestDeviceServer::bind(&args.socket, &backend) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("wasmvisor-vfio-user-testdev: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        let served = server.serve_one(&mut backend);
        // What the client gave the device and what the device did with
        // it, one line each, once the client has gone.
        for (iova, size) in backend.dma_history() {
            eprintln!("wasmvisor-vfio-user-testdev: dma map iova {iova:#x} size {size:#x}");
        }
        for access in backend.take_dma_accesses() {
            eprintln!("wasmvisor-vfio-user-testdev: {access}");
        }
        match backend.shared_sum() {
            Ok(sum) => eprintln!("wasmvisor-vfio-user-testdev: bar2 sum {sum:08x}"),
            Err(e) => eprintln!("wasmvisor-vfio-user-testdev: cannot read BAR 2: {e}"),
        }
        if let Err(e) = served {
            eprintln!("wasmvisor-vfio-user-testdev: {e}");
        }
    }
}
