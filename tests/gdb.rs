//! gdb against real guests through `run --gdb` (docs/gdb.md): Debian's
//! gdb in batch mode attaches over a Unix socket, breaks, steps, watches,
//! reads and writes registers and memory, and goes away; the guest ends
//! with its usual output.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmvisor_tests::*;

/// How long one gdb session may take before the test kills it.
const GDB_LIMIT: Duration = Duration::from_secs(60);

fn gdb_bin() -> &'static str {
    let gdb = "/usr/bin/gdb";
    assert!(
        Path::new(gdb).is_file(),
        "{gdb} is missing: `apt-get install gdb` (scripts/setup.sh installs it)"
    );
    gdb
}

/// `wasmvisor run ARGS... --gdb unix:SOCK` in the background, waiting
/// for gdb.
struct Vm {
    run: Background,
    sock: PathBuf,
    dir: PathBuf,
}

impl Vm {
    fn start(name: &str, args: &[&str]) -> Vm {
        let dir = scratch(name);
        let sock = dir.join("gdb.sock");
        let mut all: Vec<String> = vec!["run".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(["--gdb".into(), format!("unix:{}", sock.display())]);
        let mut run = Background::start(&dir, "vm", &all);
        run.wait_for_stderr("gdb: the VM waits for gdb", Duration::from_secs(30));
        Vm { run, sock, dir }
    }

    fn minios(name: &str, extra: &[&str]) -> Vm {
        let g = guest("minios.elf");
        let mut args = vec!["--guest", g.to_str().unwrap()];
        args.extend_from_slice(extra);
        Vm::start(name, &args)
    }

    /// Runs gdb with `commands` (each an `-ex`), after connecting, and
    /// returns what it printed.
    fn gdb(&self, file: Option<&Path>, commands: &[&str]) -> String {
        let mut child = self.spawn_gdb(file, commands, "gdb.out");
        wait_child(&mut child, GDB_LIMIT);
        std::fs::read_to_string(self.dir.join("gdb.out")).unwrap_or_default()
    }

    fn spawn_gdb(&self, file: Option<&Path>, commands: &[&str], out: &str) -> Child {
        let mut args: Vec<String> = vec!["-batch".into(), "-nx".into()];
        let mut ex = vec![
            "set pagination off".to_string(),
            "set confirm off".to_string(),
        ];
        if let Some(f) = file {
            ex.push(format!("file {}", f.display()));
        }
        ex.push(format!("target remote {}", self.sock.display()));
        ex.extend(commands.iter().map(|c| c.to_string()));
        for c in ex {
            args.push("-ex".into());
            args.push(c);
        }
        let log = std::fs::File::create(self.dir.join(out)).expect("gdb log");
        Command::new(gdb_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("gdb starts")
    }

    /// Waits for the VM to end; its exit code, stdout and stderr.
    fn end(mut self) -> (i32, String, String) {
        let code = self.run.wait(Duration::from_secs(60));
        let out = (code, self.run.stdout(), self.run.stderr());
        std::fs::remove_dir_all(&self.dir).ok();
        out
    }
}

fn wait_child(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gdb ran for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_has(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "`{w}` missing from:\n{text}");
    }
}

/// What minios prints when nothing disturbed it.
fn assert_minios_done(code: i32, stdout: &str, stderr: &str) {
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("minios: booting\n"), "{stdout}");
    assert_has(stdout, &["minios: 24 syscalls, current init\n"]);
    assert!(stdout.ends_with("minios: done\n"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn minios_breaks_at_its_syscall_entry_steps_and_watches_a_task() {
    require_kvm!();
    let vm = Vm::minios("minios", &[]);
    let elf = guest("minios.elf");
    let out = vm.gdb(
        Some(&elf),
        &[
            "break syscall_entry",
            "continue",
            "p/x $rip",
            "p $rax",
            "p/x $cr3",
            "p/x $gs_base",
            "x/s &s_boot",
            "stepi",
            "stepi",
            "p/x $pc",
            "delete",
            // task_shell.state: the first yield makes the shell RUNNING.
            "watch *((long *)&task_shell + 1)",
            "continue",
            "info symbol $pc",
            "delete",
            "detach",
        ],
    );
    assert_has(
        &out,
        &[
            "Breakpoint 1 at 0xffffffff80101000",
            "Breakpoint 1, 0xffffffff80101000 in syscall_entry ()",
            "$1 = 0xffffffff80101000",
            // The first system call is getpid (2).
            "$2 = 2",
            "$3 = 0x104000",
            "$4 = 0xffffffff80103000",
            "\"minios: booting\\n\"",
            // add gs:[0x20], 1 (10 bytes), cmp rax, 1 (4 bytes).
            "$5 = 0xffffffff8010100e",
            "Old value = 0",
            "New value = 1",
            "sys_yield + ",
            "[Inferior 1 (process 1) detached]",
        ],
    );
    let (code, stdout, stderr) = vm.end();
    assert_minios_done(code, &stdout, &stderr);
    assert_has(&stderr, &["gdb: attached", "gdb detached; the VM runs on"]);
}

#[test]
fn register_and_memory_writes_reach_the_guest() {
    require_kvm!();
    let vm = Vm::minios("writes", &[]);
    let elf = guest("minios.elf");
    // At the first write(): the buffer's first byte through the page
    // tables, and the length in RSI, so it prints "Task " alone.
    let out = vm.gdb(
        Some(&elf),
        &[
            "hbreak sys_write",
            "continue",
            "set var *(char *)$rdi = 'T'",
            "set var $rsi = 5",
            "p $rsi",
            "delete",
            "continue",
        ],
    );
    assert_has(&out, &["in sys_write ()", "$1 = 5", "exited normally"]);
    let (code, stdout, stderr) = vm.end();
    assert_eq!(code, 0, "{stderr}");
    assert_has(&stdout, &["\nTask task shell pid 42\n"]);
}

#[test]
fn every_vcpu_of_the_smp_guest_is_a_thread() {
    require_kvm!();
    let g = guest("smp.bin");
    let vm = Vm::start("smp", &["--guest", g.to_str().unwrap(), "--vcpus", "3"]);
    let out = vm.gdb(
        None,
        &["info threads", "thread 3", "p $edi", "p/x $eip", "continue"],
    );
    // Real mode: the i386 registers (docs/gdb.md).
    assert_has(
        &out,
        &[
            "(vCPU 0) 0x00008000",
            "(vCPU 1) 0x00008000",
            "(vCPU 2) 0x00008000",
            // EDI holds the vCPU index at entry.
            "$1 = 2",
            "$2 = 0x8000",
            "exited normally",
        ],
    );
    let (code, stdout, stderr) = vm.end();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.ends_with("smp: 3 cpus up\n"), "{stdout}");
}

#[test]
fn a_protected_mode_guest_shows_the_i386_registers() {
    require_kvm!();
    let g = guest("devices.bin");
    let vm = Vm::start(
        "i386",
        &["--guest", g.to_str().unwrap(), "--mode", "protected"],
    );
    // The first instruction: mov eax, 0x81b2 (5 bytes). A write of EDX
    // (restored) goes through the i386 register file and back.
    let out = vm.gdb(
        None,
        &[
            "show architecture",
            "info registers eip",
            "x/i $pc",
            "stepi",
            "p/x $eax",
            "p/x $eip",
            "set $saved = $edx",
            "set var $edx = 0x1234",
            "p/x $edx",
            "set var $edx = $saved",
            "info registers cs",
            "p/x $cr0 & 1",
            "continue",
        ],
    );
    assert_has(
        &out,
        &[
            "(currently \"i386\")",
            "eip            0x8000",
            "=> 0x8000:\tmov    $0x81b2,%eax",
            "$1 = 0x81b2",
            "$2 = 0x8005",
            "$3 = 0x1234",
            "cs             0x",
            "$4 = 0x1",
            "exited normally",
        ],
    );
    assert!(!out.contains("rax"), "{out}");
    let (code, stdout, stderr) = vm.end();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("devices: start\n"), "{stdout}");
    assert!(stdout.ends_with("devices: done\n"), "{stdout}");
    assert_has(
        &stderr,
        &["gdb: vCPU 0 is not in long mode: i386 registers"],
    );
}

#[test]
fn bad_addresses_and_a_fifth_breakpoint_are_errors() {
    require_kvm!();
    let vm = Vm::minios("errors", &[]);
    let elf = guest("minios.elf");
    let out = vm.gdb(
        Some(&elf),
        &[
            "x/4x 0xdeadbeef000",
            "monitor phys read 0x100000000 16",
            "monitor phys read 0x102128 16",
            "hbreak kmain",
            "hbreak sys_write",
            "hbreak sys_yield",
            "hbreak putc",
            "hbreak puts",
            "continue",
            "delete",
            "continue",
        ],
    );
    assert_has(
        &out,
        &[
            "Cannot access memory at address 0xdeadbeef000",
            "error: cannot read 16 bytes at guest-physical 0x100000000",
            "0x0000000000102128: 6d 69 6e 69 6f 73 3a 20 62 6f 6f 74 69 6e 67 0a  minios: booting.",
            "Could not insert hardware breakpoints",
            "exited normally",
        ],
    );
    let (code, stdout, stderr) = vm.end();
    assert_minios_done(code, &stdout, &stderr);
    assert_has(
        &stderr,
        &["gdb: no debug-register slot left for 0xffffffff80101522: gdb holds 4, policies 0 of the 4"],
    );
}

#[test]
fn the_vm_runs_on_when_gdb_dies_mid_session() {
    require_kvm!();
    let vm = Vm::minios("lost", &[]);
    let elf = guest("minios.elf");
    // gdb stops the guest at its first system call, then dies without a
    // word: the socket closes under the stub.
    let out = vm.gdb(
        Some(&elf),
        &["hbreak syscall_entry", "continue", "shell kill -9 $PPID"],
    );
    assert_has(&out, &["in syscall_entry ()"]);
    let (code, stdout, stderr) = vm.end();
    assert_minios_done(code, &stdout, &stderr);
    assert_has(&stderr, &["gdb closed the connection; the VM runs on"]);
}

#[test]
fn ctrl_c_stops_every_vcpu_and_kill_ends_the_vm() {
    require_kvm!();
    let g = guest("ticker.bin");
    let counter = format!("{}:@grant=stop-vm", policy("counter"));
    let vm = Vm::start(
        "interrupt",
        &[
            "--guest",
            g.to_str().unwrap(),
            "--vcpus",
            "2",
            "--policy",
            &counter,
        ],
    );
    let mut child = vm.spawn_gdb(
        None,
        &["continue", "info threads", "p/x $rip", "kill"],
        "gdb.out",
    );
    // Once gdb has attached and let the guest go, Ctrl-C (SIGINT to gdb,
    // which sends the interrupt byte).
    let log = vm.dir.join("gdb.out");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("in ?? ()")
    {
        assert!(Instant::now() < deadline, "gdb did not attach");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(400));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    wait_child(&mut child, GDB_LIMIT);
    let mut out = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_has(
        &out,
        &[
            "received signal SIGINT",
            "Thread 1.1 (vCPU 0)",
            "Thread 1.2 (vCPU 1)",
        ],
    );
    let (code, _, stderr) = vm.end();
    assert_eq!(code, 0, "{stderr}");
    assert_has(
        &stderr,
        &["gdb: killed the VM", "wasmvisor: stopped from gdb: kill"],
    );
    // The ticker ran between attach and Ctrl-C.
    assert!(!stderr.contains("policy counter: handled 0,"), "{stderr}");
}

#[test]
fn a_gdb_port_in_use_is_one_error_line() {
    require_kvm!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let g = guest("minios.elf");
    let r = wasmvisor(&[
        "run",
        "--guest",
        g.to_str().unwrap(),
        "--gdb",
        &format!("tcp:{port}"),
    ]);
    let line = r.one_error_line();
    assert!(
        line.contains(&format!("--gdb: cannot listen on tcp:127.0.0.1:{port}")),
        "{line}"
    );
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty(), "the guest never ran: {}", r.stdout);
    let bad = wasmvisor(&["run", "--guest", g.to_str().unwrap(), "--gdb", "udp:1"]);
    assert!(bad.one_error_line().contains("invalid --gdb `udp:1`"));
}

/// The rule (docs/gdb.md): gdb takes only slots no policy uses, policies
/// cannot take gdb's, and a hit where both have a breakpoint is gdb's
/// first; the policy still sees every one of its own.
#[test]
fn gdb_and_a_policy_share_the_debug_registers() {
    require_kvm!();
    let dir = scratch("share-events");
    let events = dir.join("events.jsonl");
    let tracer = format!("{}:@grant=debug", policy("syscall-tracer"));
    let vm = Vm::minios(
        "share",
        &["--policy", &tracer, "--events", events.to_str().unwrap()],
    );
    let elf = guest("minios.elf");
    // gdb's hbreak goes in first (DR0, at attach); the tracer sets its
    // breakpoint on the same entry when the kernel writes IA32_LSTAR.
    let out = vm.gdb(
        Some(&elf),
        &[
            "hbreak syscall_entry",
            "continue",
            "monitor slots",
            "delete",
            "hbreak sys_write",
            "hbreak sys_yield",
            "hbreak putc",
            "hbreak puts",
            "continue",
            "delete",
            "continue",
        ],
    );
    assert_has(
        &out,
        &[
            "in syscall_entry ()",
            "vCPU 0: DR0 gdb, DR1 policy, DR2 free, DR3 free",
            "Could not insert hardware breakpoints",
            "exited normally",
        ],
    );
    let (code, stdout, stderr) = vm.end();
    assert_minios_done(code, &stdout, &stderr);
    assert_has(
        &stderr,
        &[
            "execute breakpoint in slot 1",
            "gdb holds 3, policies 1 of the 4",
        ],
    );
    // The policy saw every system call, the one gdb stopped at included.
    assert_eq!(events_of(&events, "syscall").len(), 24);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_policy_asking_for_a_slot_gdb_holds_is_told_unsupported() {
    require_kvm!();
    let tracer = format!("{}:@grant=debug", policy("syscall-tracer"));
    let vm = Vm::minios("unsupported", &["--policy", &tracer]);
    let elf = guest("minios.elf");
    // All four slots are gdb's before the kernel writes IA32_LSTAR.
    let out = vm.gdb(
        Some(&elf),
        &[
            "hbreak kmain",
            "hbreak sys_getpid",
            "hbreak putc",
            "hbreak newline",
            "continue",
            "continue",
            "monitor slots",
            "delete",
            "continue",
        ],
    );
    assert_has(
        &out,
        &[
            "in kmain ()",
            "vCPU 0: DR0 gdb, DR1 gdb, DR2 gdb, DR3 gdb",
            "exited normally",
        ],
    );
    let (code, stdout, stderr) = vm.end();
    assert_minios_done(code, &stdout, &stderr);
    assert_has(
        &stderr,
        &["syscall-tracer: cannot set a breakpoint at IA32_LSTAR 0xffffffff80101000: unsupported"],
    );
}

/// `wasmvisor gdb-symbols` turns the Debian kernel's kallsyms into a
/// symbol file gdb loads with `add-symbol-file`.
#[test]
fn kallsyms_become_a_symbol_file_gdb_loads() {
    let vmlinux = assets().join("linux").join("vmlinux");
    assert!(
        vmlinux.is_file(),
        "{} is missing: run `make kernel` (scripts/fetch-kernel.sh) first",
        vmlinux.display()
    );
    let dir = scratch("ksyms");
    let out = dir.join("vmlinux.syms");
    let r = wasmvisor(&[
        "gdb-symbols",
        vmlinux.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_has(&r.stdout, &["87347 symbols"]);
    let profile = wasmvisor_profile::Profile::from_file(&vmlinux).unwrap();
    let init_task = profile.symbols.lookup("init_task").unwrap();
    let start_kernel = profile.symbols.lookup("start_kernel").unwrap();
    let o = Command::new(gdb_bin())
        .args(["-batch", "-nx"])
        .args(["-ex", &format!("add-symbol-file {}", out.display())])
        .args(["-ex", "info address init_task"])
        .args(["-ex", &format!("info symbol {:#x}", start_kernel + 15)])
        .args(["-ex", "p &linux_banner"])
        .output()
        .expect("gdb runs");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_has(
        &text,
        &[
            &format!("Symbol \"init_task\" is at {init_task:#x}"),
            "start_kernel + 15 in section .text",
            "<data variable, no debug info> *) 0x",
        ],
    );
    std::fs::remove_dir_all(dir).ok();
}

/// gdb attaches to the Debian kernel early in its boot (`--gdb-nowait`),
/// gets its symbols from the VM (`monitor symbols`), names the function
/// the vCPU is in and reads the kernel's banner through its page tables,
/// then kills the VM.
#[test]
fn a_booting_linux_kernel_is_named_through_its_kallsyms() {
    require_kvm!();
    let vmlinux = assets().join("linux").join("vmlinux");
    assert!(
        vmlinux.is_file(),
        "{} is missing: run `make kernel` (scripts/fetch-kernel.sh) first",
        vmlinux.display()
    );
    let dir = scratch("linux");
    let sock = dir.join("gdb.sock");
    let syms = dir.join("vmlinux.syms");
    let gdb_arg = format!("unix:{}", sock.display());
    let run = Background::start(
        &dir,
        "vm",
        &[
            "run",
            "--kernel",
            vmlinux.to_str().unwrap(),
            "--mem",
            "256M",
            "--gdb",
            &gdb_arg,
            "--gdb-nowait",
        ],
    );
    // The kernel has its own page tables once it prints.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.stdout().contains("Command line:") {
        assert!(Instant::now() < deadline, "no boot log: {}", run.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let vm = Vm { run, sock, dir };
    let monitor = format!("monitor symbols {}", syms.display());
    let add = format!("add-symbol-file {}", syms.display());
    let out = vm.gdb(
        None,
        &[
            &monitor,
            &add,
            "info symbol $pc",
            "x/s &linux_banner",
            "p/x &init_task",
            "kill",
        ],
    );
    let profile = wasmvisor_profile::Profile::from_file(&vmlinux).unwrap();
    let init_task = profile.symbols.lookup("init_task").unwrap();
    assert_has(
        &out,
        &[
            "wrote 87347 symbols (slide 0x0)",
            " in section .text",
            "<linux_banner>:\t\"Linux version 6.1.0-",
            &format!("= {init_task:#x}"),
        ],
    );
    let (code, stdout, stderr) = vm.end();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Linux version 6.1"), "{stdout}");
    assert_has(&stderr, &["wasmvisor: stopped from gdb: kill"]);
}

/// A guest failure under `--hold-on-fault` shows in gdb as SIGSEGV at the
/// failing instruction, and again at every resume: the vCPU cannot run.
#[test]
fn a_held_guest_failure_is_a_sigsegv_in_gdb() {
    require_kvm!();
    // nop; cmpxchg16b [0x9000] (which this machine's emulator cannot run;
    // on hardware KVM it faults on its misaligned operand); hlt.
    let dir = scratch("fault-image");
    let image = dir.join("cx16.bin");
    std::fs::write(
        &image,
        [
            0x90, 0x48, 0x0f, 0xc7, 0x0c, 0x25, 0x00, 0x90, 0x00, 0x00, 0xf4,
        ],
    )
    .unwrap();
    let vm = Vm::start(
        "fault",
        &[
            "--guest",
            image.to_str().unwrap(),
            "--mode",
            "long",
            "--hold-on-fault",
        ],
    );
    let out = vm.gdb(
        None,
        &["continue", "p/x $pc", "x/3xb $pc", "continue", "kill"],
    );
    let (code, _, stderr) = vm.end();
    std::fs::remove_dir_all(dir).ok();
    if !stderr.contains("KVM internal error") {
        // Hardware KVM runs the instruction; no failure to show.
        return;
    }
    assert_has(
        &out,
        &[
            "Program received signal SIGSEGV",
            "$1 = 0x8001",
            "0x8001:\t0x48\t0x0f\t0xc7",
        ],
    );
    assert_eq!(out.matches("received signal SIGSEGV").count(), 2, "{out}");
    assert_eq!(code, 3, "the failure stays the run's outcome: {stderr}");
    assert_has(&stderr, &["gdb: killed the VM"]);
}
