//! Introspection policies on the minios guest: each policy finds the
//! kernel's structures from the guest's own state (IA32_LSTAR, CR3,
//! IA32_GS_BASE) and the test checks what it reports against what the
//! guest itself printed about the same structures.

use std::process::Command;

use serde_json::Value;
use wasmvisor_tests::*;

/// The GVA of minios's kernel = GPA + this.
const KERNEL_VBASE: u64 = 0xffff_ffff_8000_0000;

/// A run and the records it wrote to `--events`.
struct Traced {
    run: Run,
    records: Vec<Value>,
}

impl Traced {
    /// The `data` of every record of `kind`.
    fn data(&self, kind: &str) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| &r["data"])
            .collect()
    }

    /// The `data` of every record of `kind` emitted by `policy`.
    fn from(&self, policy: &str, kind: &str) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["kind"] == kind && r["policy"] == policy)
            .map(|r| &r["data"])
            .collect()
    }

    /// The summary line `policy NAME: handled N, ...` as N.
    fn handled(&self, policy: &str) -> u64 {
        let prefix = format!("policy {policy}: handled ");
        let line = self
            .run
            .stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no summary line for {policy}: {}", self.run.stderr));
        line[prefix.len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The number of exits of `kind` in the summary's `exits:` line.
    fn exits(&self, kind: &str) -> u64 {
        let line = self
            .run
            .stderr
            .lines()
            .find(|l| l.starts_with("exits: "))
            .unwrap_or_else(|| panic!("no exits line: {}", self.run.stderr));
        let (_, kinds) = line
            .split_once("): ")
            .expect("exits: N in T s (R/s): kinds");
        kinds
            .split(", ")
            .find_map(|k| k.strip_prefix(&format!("{kind} ")))
            .map_or(0, |n| n.parse().unwrap())
    }
}

/// Runs `guest` under `policies` (then the serial policy) with an event
/// stream, and returns what it showed.
fn traced(name: &str, guest_file: &str, policies: &[String]) -> Traced {
    let dir = scratch(name);
    let events = dir.join("events.jsonl");
    let g = guest(guest_file);
    let serial = policy("serial");
    let mut args = vec!["run", "--guest", g.to_str().unwrap()];
    for p in policies {
        args.extend(["--policy", p.as_str()]);
    }
    args.extend([
        "--policy",
        serial.as_str(),
        "--events",
        events.to_str().unwrap(),
    ]);
    let run = wasmvisor(&args);
    if run.code == 0 {
        // Every line is a schema 2 line: `"schema":2` first.
        assert_event_schema(&events);
    }
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    std::fs::remove_dir_all(dir).ok();
    Traced { run, records }
}

fn minios(name: &str, policies: &[String]) -> Traced {
    traced(name, "minios.elf", policies)
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{v} is not an unsigned number"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

/// The guest's `task NAME pid N` lines, in order, with their newline.
fn task_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("task "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What minios prints whatever a policy does to the tampering.
fn assert_minios_ran(t: &Traced) {
    assert_eq!(t.run.code, 0, "{:?}", t.run);
    let out = &t.run.stdout;
    assert!(out.starts_with("minios: booting\n"), "{out}");
    assert_contains(
        out,
        &["minios: cr3 0000000000104000 lstar ffffffff80101000 gs ffffffff80103000\n"],
    );
    assert_contains(out, &["minios: 24 syscalls, current init\n"]);
    assert!(out.ends_with("minios: done\n"), "{out}");
    assert_eq!(task_lines(out).len(), 8, "{out}");
}

// ---------------------------------------------------------------------------
// mem-guard
// ---------------------------------------------------------------------------

fn mem_guard(config: &str) -> String {
    let sep = if config.is_empty() { "" } else { "," };
    format!("{}:{config}{sep}@grant=protect-memory", policy("mem-guard"))
}

/// The two tamper records minios provokes: the text byte, then the PTE.
fn assert_two_tampers(t: &Traced, verdict: &str) {
    let tampers = t.from("mem-guard", "tamper");
    assert_eq!(tampers.len(), 2, "{:?}", t.records);
    let kinds: Vec<&str> = tampers.iter().map(|d| s(&d["kind"])).collect();
    assert_eq!(kinds, ["text", "page-table"]);
    let gpas: Vec<u64> = tampers.iter().map(|d| hex_field(&d["gpa"])).collect();
    assert_eq!(gpas, [0x101ff0, 0x107ff8]);
    let sizes: Vec<u64> = tampers.iter().map(|d| u(&d["size"])).collect();
    assert_eq!(sizes, [1, 8]);
    let data: Vec<u64> = tampers.iter().map(|d| hex_field(&d["data"])).collect();
    assert_eq!(data, [0x90, 0x200]);
    for d in &tampers {
        assert_eq!(d["verdict"], verdict);
        assert_eq!(d["access"], "write");
        // The stores come from kernel text, in the higher half.
        assert!(hex_field(&d["rip"]) >= KERNEL_VBASE + 0x101000, "{d}");
    }
    // The host records the same violations, answered by the guard.
    let host = t.from("wasmvisor", "mem-violation");
    assert_eq!(host.len(), 2, "{:?}", t.records);
    for (h, d) in host.iter().zip(&tampers) {
        assert_eq!(h["gpa"], d["gpa"]);
        assert_eq!(h["answered_by"], "mem-guard");
    }
    assert_eq!(
        t.run
            .stderr
            .lines()
            .filter(|l| l.contains("warn: mem-guard: tamper: write"))
            .count(),
        2,
        "{}",
        t.run.stderr
    );
}

/// The `protected` record: the text page found from LSTAR and the seven
/// page-table pages found from CR3.
fn assert_protected(t: &Traced) {
    let protected = t.from("mem-guard", "protected");
    assert_eq!(protected.len(), 1, "{:?}", t.records);
    let p = protected[0];
    assert_eq!(hex_field(&p["entry"]), KERNEL_VBASE + 0x101000);
    assert_eq!(hex_field(&p["cr3"]), 0x104000);
    assert_eq!(p["paging"], "4-level");
    assert_eq!(u(&p["tables"]), 7);
    assert_eq!(p["truncated"], false);
    assert_eq!(p["errors"], serde_json::json!([]));
    let ranges: Vec<(u64, u64, &str)> = p["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (hex_field(&r["base"]), u(&r["len"]), s(&r["kind"])))
        .collect();
    assert_eq!(
        ranges,
        [(0x101000, 0x1000, "text"), (0x104000, 0x7000, "page-table")]
    );
}

#[test]
fn mem_guard_denies_tampering_with_kernel_text_and_page_tables() {
    require_kvm!();
    let t = minios("mg-deny", &[mem_guard("")]);
    assert_minios_ran(&t);
    assert_has_lines(
        &t.run.stdout,
        &["tamper text: cc", "tamper pt: 0000000000000000"],
    );
    assert_protected(&t);
    assert_two_tampers(&t, "deny");
    assert_eq!(t.exits("mem-violation"), 2);
}

#[test]
fn mem_guard_allow_reports_and_lets_writes_land() {
    require_kvm!();
    let t = minios("mg-allow", &[mem_guard("on-tamper=allow")]);
    assert_minios_ran(&t);
    assert_has_lines(
        &t.run.stdout,
        &["tamper text: 90", "tamper pt: 0000000000000200"],
    );
    assert_two_tampers(&t, "allow");
}

#[test]
fn mem_guard_unprotect_lets_the_retried_writes_land() {
    require_kvm!();
    let t = minios("mg-unprotect", &[mem_guard("on-tamper=unprotect")]);
    assert_minios_ran(&t);
    assert_has_lines(
        &t.run.stdout,
        &["tamper text: 90", "tamper pt: 0000000000000200"],
    );
    assert_two_tampers(&t, "unprotect");
}

/// The faults guest writes 0x1234 to 0x9000 and then 0x5678 to 0x9002, the
/// same page, and prints both words back. Allowed, both writes are
/// reported; unprotected after the first, the second is not.
#[test]
fn mem_guard_unprotect_stops_reporting_the_page() {
    require_kvm!();
    let guard = |name: &str, on_tamper: &str| {
        let config = format!("discover=false,protect=0x9000+0x1000,on-tamper={on_tamper}");
        traced(name, "faults.bin", &[mem_guard(&config)])
    };
    let allow = guard("mg-page-allow", "allow");
    assert_eq!(allow.run.code, 0, "{:?}", allow.run);
    assert_contains(&allow.run.stdout, &["ram: 56781234\n"]);
    let gpas: Vec<u64> = allow
        .from("mem-guard", "tamper")
        .iter()
        .map(|d| hex_field(&d["gpa"]))
        .collect();
    assert_eq!(gpas, [0x9000, 0x9002]);

    let unprotect = guard("mg-page-unprotect", "unprotect");
    assert_eq!(unprotect.run.code, 0, "{:?}", unprotect.run);
    assert_contains(&unprotect.run.stdout, &["ram: 56781234\n"]);
    let tampers = unprotect.from("mem-guard", "tamper");
    assert_eq!(tampers.len(), 1, "{:?}", unprotect.records);
    assert_eq!(hex_field(&tampers[0]["gpa"]), 0x9000);
    assert_eq!(hex_field(&tampers[0]["data"]), 0x1234);
    assert_eq!(tampers[0]["kind"], "range");
    assert_eq!(unprotect.data("mem-violation").len(), 1);

    // Denied, neither write lands; reads of a write-protected page are
    // not trapped and see the RAM underneath.
    let deny = guard("mg-page-deny", "deny");
    assert_contains(&deny.run.stdout, &["ram: 00000000\n"]);
    assert_eq!(deny.from("mem-guard", "tamper").len(), 2);
}

#[test]
fn mem_guard_answers_no_access_reads_with_its_own_data() {
    require_kvm!();
    let t = traced(
        "mg-no-access",
        "faults.bin",
        &[mem_guard(
            "discover=false,no-access=0x9000+0x1000,read-value=0x5a",
        )],
    );
    assert_eq!(t.run.code, 0, "{:?}", t.run);
    // Two 16-bit reads, each answered with 0x5a.
    assert_contains(&t.run.stdout, &["ram: 005a005a\n"]);
    assert!(t.run.stdout.ends_with("faults: done\n"), "{}", t.run.stdout);
    let reads = t.from("mem-guard", "access");
    let seen: Vec<(u64, u64, &str)> = reads
        .iter()
        .map(|d| (hex_field(&d["gpa"]), u(&d["size"]), s(&d["verdict"])))
        .collect();
    assert_eq!(seen, [(0x9002, 2, "read-value"), (0x9000, 2, "read-value")]);
    // The guest's writes to the page are tampering, denied by default.
    let writes: Vec<(u64, u64)> = t
        .from("mem-guard", "tamper")
        .iter()
        .map(|d| (hex_field(&d["gpa"]), hex_field(&d["data"])))
        .collect();
    assert_eq!(writes, [(0x9000, 0x1234), (0x9002, 0x5678)]);
    let host_reads: Vec<u64> = t
        .from("wasmvisor", "mem-violation")
        .iter()
        .filter(|d| d["access"] == "read")
        .map(|d| hex_field(&d["read"]))
        .collect();
    assert_eq!(host_reads, [0x5a, 0x5a]);
}

// ---------------------------------------------------------------------------
// syscall-tracer
// ---------------------------------------------------------------------------

fn tracer(config: &str) -> String {
    let sep = if config.is_empty() { "" } else { "," };
    format!("{}:{config}{sep}@grant=debug", policy("syscall-tracer"))
}

/// A symbol's address from the guest's symbol table (`nm`).
fn symbol(name: &str) -> u64 {
    let elf = guest("minios.elf");
    let out = Command::new("nm")
        .arg(&elf)
        .output()
        .expect("nm (binutils) runs: `make setup` installs it");
    assert!(out.status.success(), "nm {}", elf.display());
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _, sym) = (f.next()?, f.next()?, f.next()?);
            (sym == name).then(|| u64::from_str_radix(addr, 16).unwrap())
        })
        .unwrap_or_else(|| panic!("no symbol {name} in {}", elf.display()))
}

/// The addresses of the first `n` instructions from `start`, disassembled
/// by binutils' objdump from the guest image itself.
fn instruction_addresses(start: u64, n: usize) -> Vec<u64> {
    let elf = guest("minios.elf");
    let out = Command::new("objdump")
        .args([
            "-d",
            "-w", // one line per instruction, however long its encoding
            &format!("--start-address={start:#x}"),
            &format!("--stop-address={:#x}", start + 16 * n as u64),
        ])
        .arg(&elf)
        .output()
        .expect("objdump (binutils) runs: `make setup` installs it");
    assert!(out.status.success(), "objdump {}", elf.display());
    let text = String::from_utf8(out.stdout).unwrap();
    // Instruction lines are "ADDR:\tBYTES\tMNEMONIC ..."; labels
    // ("ADDR <sym>:") and headers have no tab-separated bytes.
    let addrs: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.trim_start().split('\t');
            let addr = f.next()?.strip_suffix(':')?;
            let (_bytes, mnemonic) = (f.next()?, f.next()?);
            (!mnemonic.trim().is_empty()).then(|| u64::from_str_radix(addr, 16).ok())?
        })
        .take(n)
        .collect();
    assert_eq!(addrs.len(), n, "objdump output:\n{text}");
    addrs
}

/// The calls minios makes: getpid, write, yield for each task, two rounds.
fn expected_names() -> Vec<&'static str> {
    ["getpid", "write", "yield"].repeat(8)
}

fn assert_syscalls(t: &Traced) {
    let calls = t.from("syscall-tracer", "syscall");
    assert_eq!(calls.len(), 24, "{:?}", t.records);
    let names: Vec<&str> = calls.iter().map(|d| s(&d["name"])).collect();
    assert_eq!(names, expected_names());
    let ns: Vec<u64> = calls.iter().map(|d| u(&d["n"])).collect();
    assert_eq!(ns, (1..=24).collect::<Vec<u64>>());
    let nrs: Vec<u64> = calls.iter().map(|d| u(&d["nr"])).collect();
    assert_eq!(nrs, [2, 1, 3].repeat(8));
    // write's payload, read through the guest's page tables at the
    // breakpoint, is exactly what the guest then printed.
    let payloads: Vec<&str> = calls
        .iter()
        .filter(|d| d["name"] == "write")
        .map(|d| s(&d["data"]))
        .collect();
    assert_eq!(payloads, task_lines(&t.run.stdout));
    assert_eq!(payloads[0], "task init pid 1\n");
    for d in calls.iter().filter(|d| d["name"] == "write") {
        assert_eq!(hex_field(&d["rsi"]), s(&d["data"]).len() as u64);
        assert_eq!(d["truncated"], false);
    }
    for d in &calls {
        assert_eq!(hex_field(&d["rip"]), KERNEL_VBASE + 0x101000, "{d}");
    }
    // The breakpoint went on the entry the guest wrote to LSTAR.
    let bps = t.from("syscall-tracer", "breakpoint");
    assert_eq!(bps.len(), 1, "{:?}", t.records);
    assert_eq!(hex_field(&bps[0]["gva"]), symbol("syscall_entry"));
}

#[test]
fn syscall_tracer_sees_every_system_call() {
    require_kvm!();
    let t = minios("tracer", &[tracer("")]);
    assert_minios_ran(&t);
    // Untouched tampering: the tracer only observes.
    assert_has_lines(&t.run.stdout, &["tamper text: 90"]);
    assert_syscalls(&t);
    // One breakpoint hit per system call the guest counted ("24 syscalls"):
    // the tracer handled exactly 24 debug exits. (The summary's debug
    // count may be higher if the host steps over the breakpoint with
    // exits of its own.)
    assert_eq!(t.handled("syscall-tracer"), 24, "{}", t.run.stderr);
    assert!(t.exits("debug") >= 24, "{}", t.run.stderr);
    assert!(t.from("syscall-tracer", "step").is_empty());
}

/// `step=5` single-steps the first system call's first five instructions.
/// The expected RIPs come from disassembling the guest image with objdump
/// from `syscall_entry` (its address from `nm`): those are the first five
/// instructions in address order. The first call is `getpid` (RAX = 2),
/// whose path through the entry is add, cmp, je (not taken), cmp, je: the
/// first five instructions executed are exactly the first five in the
/// image, so the linear disassembly is the execution trace.
#[test]
fn syscall_tracer_steps_through_the_entry() {
    require_kvm!();
    let entry = symbol("syscall_entry");
    assert_eq!(entry, KERNEL_VBASE + 0x101000);
    let expected = instruction_addresses(entry, 5);
    assert_eq!(expected[0], entry);

    let t = minios("tracer-step", &[tracer("step=5")]);
    assert_minios_ran(&t);
    assert_syscalls(&t);
    assert_eq!(t.from("syscall-tracer", "syscall")[0]["name"], "getpid");
    let steps = t.from("syscall-tracer", "step");
    let rips: Vec<u64> = steps.iter().map(|d| hex_field(&d["rip"])).collect();
    assert_eq!(
        rips, expected,
        "step RIPs {:x?} vs objdump {:x?}",
        rips, expected
    );
    let idx: Vec<u64> = steps.iter().map(|d| u(&d["i"])).collect();
    assert_eq!(idx, [1, 2, 3, 4, 5]);
    // 24 breakpoint hits plus 5 single-step exits, all handled.
    assert_eq!(t.handled("syscall-tracer"), 29, "{}", t.run.stderr);
    assert!(t.exits("debug") >= 29, "{}", t.run.stderr);
}

// ---------------------------------------------------------------------------
// task-lister
// ---------------------------------------------------------------------------

/// The tasks as minios itself reports them: the names from its
/// `minios: tasks ...` line, the pids from its first round of
/// `task NAME pid N` lines.
fn guest_tasks(stdout: &str) -> Vec<(String, u64)> {
    let names: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("minios: tasks "))
        .unwrap_or_else(|| panic!("no task line: {stdout}"))
        .split(' ')
        .collect();
    let lines = task_lines(stdout);
    names
        .iter()
        .zip(&lines)
        .map(|(name, line)| {
            let rest = line
                .trim_end()
                .strip_prefix(&format!("task {name} pid "))
                .unwrap_or_else(|| panic!("{line:?} is not task {name}"));
            (name.to_string(), rest.parse().unwrap())
        })
        .collect()
}

fn assert_tasks(t: &Traced, when: &str) {
    let guest = guest_tasks(&t.run.stdout);
    assert_eq!(
        guest,
        [
            ("init".to_string(), 1),
            ("shell".to_string(), 42),
            ("netd".to_string(), 73),
            ("logger".to_string(), 108)
        ]
    );
    let tasks = t.from("task-lister", "task");
    let seen: Vec<(String, u64)> = tasks
        .iter()
        .map(|d| (s(&d["name"]).to_string(), u(&d["pid"])))
        .collect();
    assert_eq!(seen, guest, "{:?}", t.records);
    for (i, d) in tasks.iter().enumerate() {
        assert_eq!(u(&d["index"]), i as u64);
        assert_eq!(d["when"], when);
        // Read through the kernel's own mapping: GVA = GPA + the base.
        assert_eq!(
            hex_field(&d["gva"]) - KERNEL_VBASE,
            hex_field(&d["gpa"]),
            "{d}"
        );
        // init runs (it is current at boot and again after 24 calls).
        let running = i == 0;
        assert_eq!(d["current"], running, "{d}");
        assert_eq!(d["state"], if running { "running" } else { "ready" });
    }
    assert_eq!(hex_field(&tasks[0]["gva"]), symbol("task_init"));
    let lists = t.from("task-lister", "task-list");
    assert_eq!(lists.len(), 1, "{:?}", t.records);
    assert_eq!(u(&lists[0]["count"]), 4);
    assert_eq!(lists[0]["end"], "complete");
    assert_eq!(hex_field(&lists[0]["percpu"]), symbol("percpu"));
    assert_eq!(hex_field(&lists[0]["head"]), symbol("task_list_head"));
    // Each task is also a JSON log line on stderr.
    let logged: Vec<Value> = t
        .run
        .stderr
        .lines()
        .filter_map(|l| l.split_once("] info: ").map(|(_, json)| json))
        .filter_map(|json| serde_json::from_str::<Value>(json).ok())
        .filter(|v| v.get("pid").is_some())
        .collect();
    assert_eq!(logged.len(), 4, "{}", t.run.stderr);
    assert_eq!(&logged[0], tasks[0]);
}

#[test]
fn task_lister_walks_the_guest_task_list() {
    require_kvm!();
    let t = minios("tasks", &[policy("task-lister")]);
    assert_minios_ran(&t);
    assert_tasks(&t, "lstar");
}

#[test]
fn task_lister_at_hlt_sees_the_final_state() {
    require_kvm!();
    let t = minios("tasks-hlt", &[format!("{}:at=hlt", policy("task-lister"))]);
    assert_minios_ran(&t);
    assert_tasks(&t, "hlt");
    // The lister declined the HLT: the vCPU halted as the guest asked.
    assert_contains(&t.run.stderr, &["wasmvisor: all vCPUs halted"]);
}

// ---------------------------------------------------------------------------
// All three at once
// ---------------------------------------------------------------------------

/// The three policies all subscribe to the LSTAR write and decline it, so
/// each sees it in turn and KVM still stores the value the guest wrote.
#[test]
fn introspection_policies_stack() {
    require_kvm!();
    let t = minios("stack", &[policy("task-lister"), tracer(""), mem_guard("")]);
    assert_minios_ran(&t);
    assert_has_lines(
        &t.run.stdout,
        &["tamper text: cc", "tamper pt: 0000000000000000"],
    );
    assert_tasks(&t, "lstar");
    assert_syscalls(&t);
    assert_protected(&t);
    assert_two_tampers(&t, "deny");
}
