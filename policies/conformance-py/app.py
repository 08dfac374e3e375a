"""The conformance policy (docs/conformance.md) in Python.

componentize-py generates the `wit_world` bindings from wit/ while it
builds the component (scripts/build-lang-policies.sh). Each component
instance serves one vCPU, so module globals are per-vCPU state.
"""

import string
from dataclasses import dataclass

import wit_world.exports
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    Action_Allow,
    Action_CompleteRead,
    Action_Deny,
    Action_Inject,
    Action_Resume,
    Capabilities,
    CpuidLeaf,
    Direction,
    EventSet,
    Exception as GuestException,
    ExitEvent,
    ExitKind_Io,
    ExitKind_MemViolation,
    ExitKind_Mmio,
    ExitKind_Msr,
    GpaRange,
    IoExit,
    MemAccess,
    MemViolation,
    MmioExit,
    MsrExit,
    MsrRange,
    PolicyInfo,
    PortRange,
    ProtectRequest,
    Protection,
    Subscriptions,
    Verdict,
    Verdict_Decline,
    Verdict_Handled,
)


class Port:
    """The ports, in a namespace so `match` compares against them (a bare
    name in a `case` would bind instead)."""

    COUNT, LAST, EMIT, PEEK = 0x520, 0x521, 0x522, 0x523


class Msr:
    VALUE, NEXT = 0x5100_0000, 0x5100_0001


MMIO_BASE, MMIO_LEN = 0xD100_0000, 0x1000
GUARDED_PAGE = 0x7_0000
DENIED_VALUE = 0xBAD
DEFAULT_KEY = 0x5A5A_5A5A
INITIAL_MSR = 0x1234_5678_9ABC_DEF0
GP_VECTOR = 13
U64 = (1 << 64) - 1


@dataclass
class State:
    key: int = DEFAULT_KEY
    count: int = 0
    last: int = 0
    msr: int = INITIAL_MSR
    addr: int = 0


state = State()


def mask(size: int) -> int:
    """`2^(8*size) - 1`: what a read of `size` bytes can hold."""
    return (1 << (8 * size)) - 1


def parse_u32(text: str) -> int:
    """Decimal or 0x hex that fits in 32 bits. int() alone would also take
    signs, spaces, underscores and non-ASCII digits, which the spec does
    not allow."""
    if text[:2] in ("0x", "0X"):
        digits, base, allowed = text[2:], 16, string.hexdigits
    else:
        digits, base, allowed = text, 10, string.digits
    if not digits or any(c not in allowed for c in digits):
        raise ValueError(text)
    value = int(digits, base)
    if value > 0xFFFF_FFFF:
        raise ValueError(text)
    return value


def resume() -> Verdict:
    return Verdict_Handled([Action_Resume()])


def complete(value: int) -> Verdict:
    return Verdict_Handled([Action_CompleteRead(value)])


def peek(addr: int) -> int:
    """The 4 little-endian bytes at `addr`, all-ones if the host refuses
    (the import's error arrives as an Err exception)."""
    try:
        data = host.read_phys(addr, 4)
    except Err:
        return 0xFFFF_FFFF
    return int.from_bytes(data, "little") if len(data) == 4 else 0xFFFF_FFFF


def on_io(io: IoExit) -> Verdict:
    match (io.port, io.direction):
        case (Port.COUNT, Direction.READ):
            value = state.count
        case (Port.LAST, Direction.WRITE):
            state.last = io.data
            return resume()
        case (Port.LAST, Direction.READ):
            value = state.last ^ state.key
        case (Port.EMIT, Direction.WRITE):
            host.emit("conformance", f'{{"value":{io.data}}}')
            return resume()
        case (Port.PEEK, Direction.WRITE):
            state.addr = io.data
            return resume()
        case (Port.PEEK, Direction.READ):
            value = peek(state.addr)
        case _:
            return Verdict_Decline()
    return complete(value & mask(io.size))


def on_msr(msr: MsrExit) -> Verdict:
    match (msr.index, msr.direction):
        case (Msr.VALUE, Direction.READ):
            return complete(state.msr)
        case (Msr.VALUE, Direction.WRITE):
            state.msr = msr.value
            return resume()
        case (Msr.NEXT, Direction.READ):
            # Python ints do not wrap: cut to 64 bits by hand.
            return complete((state.msr + 1) & U64)
        case (Msr.NEXT, Direction.WRITE):
            return Verdict_Handled([Action_Inject(GuestException(GP_VECTOR, 0))])
    return Verdict_Decline()


def on_mmio(mmio: MmioExit) -> Verdict:
    offset = mmio.gpa - MMIO_BASE
    if not 0 <= offset < MMIO_LEN:
        return Verdict_Decline()
    if mmio.direction == Direction.READ:
        return complete((offset * 3) & mask(mmio.size))
    return resume()  # the write is dropped


def on_mem_violation(v: MemViolation) -> Verdict:
    denied = v.access == MemAccess.WRITE and (v.data & mask(v.size)) == DENIED_VALUE
    return Verdict_Handled([Action_Deny() if denied else Action_Allow()])


class Handler(wit_world.exports.Handler):
    def info(self) -> PolicyInfo:
        return PolicyInfo("conformance", "1.0.0", "conformance policy (Python)")

    def init(self, config: list[tuple[str, str]]) -> Subscriptions:
        global state
        # Unknown keys first, then the value of `key` (the last one wins if
        # it repeats), as the other builds do.
        for name, _ in config:
            if name != "key":
                raise Err(f"unknown config key `{name}`")
        values = [value for _, value in config]
        key = DEFAULT_KEY
        if values:
            try:
                key = parse_u32(values[-1])
            except ValueError:
                raise Err(f"config key `key`: `{values[-1]}` is not a 32-bit number") from None
        state = State(key=key)
        return Subscriptions(
            ports=[PortRange(Port.COUNT, Port.PEEK)],
            mmio=[GpaRange(MMIO_BASE, MMIO_LEN)],
            msrs=[MsrRange(Msr.VALUE, Msr.NEXT)],
            cpuid=[],
            events=EventSet.MEM_VIOLATION,
            protect=[ProtectRequest(GpaRange(GUARDED_PAGE, 0x1000), Protection.WRITE_PROTECT)],
            capabilities=Capabilities.PROTECT_MEMORY,
        )

    def handle_exit(self, event: ExitEvent) -> Verdict:
        state.count += 1
        match event.kind:
            case ExitKind_Io(io):
                return on_io(io)
            case ExitKind_Msr(msr):
                return on_msr(msr)
            case ExitKind_Mmio(mmio):
                return on_mmio(mmio)
            case ExitKind_MemViolation(v):
                return on_mem_violation(v)
        return Verdict_Decline()

    def cpuid(self, leaf: CpuidLeaf) -> CpuidLeaf:
        return leaf

    def save_state(self) -> bytes:
        return state.count.to_bytes(8, "little")

    def restore_state(self, saved: bytes) -> None:
        if len(saved) != 8:
            raise Err(f"conformance: the state must be 8 bytes, got {len(saved)}")
        state.count = int.from_bytes(saved, "little")
