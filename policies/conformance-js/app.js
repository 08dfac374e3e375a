// The conformance policy (docs/conformance.md) in JavaScript.
//
// jco componentize reads the world from wit/ and maps its types the usual
// way: records are objects with camelCase fields, variants are
// `{ tag, val }`, enums are strings, flags are objects of booleans, u64 is
// a BigInt, and a thrown value becomes the `err` of a `result`. Each
// component instance serves one vCPU, so module state is per-vCPU state.

import { emit, readPhys } from "wasmvisor:policy/host@0.1.0";

const PORT_COUNT = 0x520;
const PORT_LAST = 0x521;
const PORT_EMIT = 0x522;
const PORT_PEEK = 0x523;
const MSR_VALUE = 0x5100_0000;
const MSR_NEXT = 0x5100_0001;
const MMIO_BASE = 0xd100_0000n;
const MMIO_LEN = 0x1000n;
const GUARDED_PAGE = 0x7_0000n;
const DENIED_VALUE = 0xbadn;
const DEFAULT_KEY = 0x5a5a_5a5an;
const INITIAL_MSR = 0x1234_5678_9abc_def0n;
const GP_VECTOR = 13;

// Every u64 the host sees is a BigInt; u32 data (port I/O) is a Number and
// is widened with BigInt() before any arithmetic.
let state = newState(DEFAULT_KEY);

function newState(key) {
  return { key, count: 0n, last: 0n, msr: INITIAL_MSR, addr: 0n };
}

/** `2^(8*size) - 1`: what a read of `size` bytes can hold. */
const mask = (size) => (1n << (8n * BigInt(size))) - 1n;

/** Decimal or 0x hex that fits in 32 bits; null otherwise. BigInt() alone
 * would also take spaces, 0o/0b prefixes and an empty string. */
function parseU32(text) {
  const hex = /^0[xX][0-9a-fA-F]+$/.test(text);
  if (!hex && !/^[0-9]+$/.test(text)) return null;
  const value = BigInt(hex ? `0x${text.slice(2)}` : text);
  return value <= 0xffff_ffffn ? value : null;
}

const decline = () => ({ tag: "decline" });
const answer = (...actions) => ({ tag: "handled", val: actions });
const resume = () => answer({ tag: "resume" });
const complete = (value) => answer({ tag: "complete-read", val: value });

/** The 4 little-endian bytes at `addr`; all-ones if the import returns an
 * error, which jco raises as an exception. */
function peek(addr) {
  let bytes;
  try {
    bytes = readPhys(addr, 4);
  } catch {
    return 0xffff_ffffn;
  }
  if (bytes.length !== 4) return 0xffff_ffffn;
  return BigInt(new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true));
}

function onIo({ port, size, direction, data }) {
  let value;
  if (direction === "write") {
    switch (port) {
      case PORT_LAST:
        state.last = BigInt(data);
        break;
      case PORT_EMIT:
        emit("conformance", JSON.stringify({ value: data }));
        break;
      case PORT_PEEK:
        state.addr = BigInt(data);
        break;
      default:
        return decline();
    }
    return resume();
  }
  switch (port) {
    case PORT_COUNT:
      value = state.count;
      break;
    case PORT_LAST:
      value = state.last ^ state.key;
      break;
    case PORT_PEEK:
      value = peek(state.addr);
      break;
    default:
      return decline();
  }
  return complete(value & mask(size));
}

function onMsr({ index, direction, value }) {
  const read = direction === "read";
  if (index === MSR_VALUE && read) return complete(state.msr);
  if (index === MSR_VALUE) {
    state.msr = value;
    return resume();
  }
  // BigInts do not wrap: cut to 64 bits by hand.
  if (index === MSR_NEXT && read) return complete(BigInt.asUintN(64, state.msr + 1n));
  if (index === MSR_NEXT) {
    return answer({ tag: "inject", val: { vector: GP_VECTOR, errorCode: 0 } });
  }
  return decline();
}

function onMmio({ gpa, size, direction }) {
  const offset = gpa - MMIO_BASE;
  if (offset < 0n || offset >= MMIO_LEN) return decline();
  if (direction === "read") return complete((offset * 3n) & mask(size));
  return resume(); // the write is dropped
}

function onMemViolation({ access, size, data }) {
  const denied = access === "write" && (data & mask(size)) === DENIED_VALUE;
  return answer({ tag: denied ? "deny" : "allow" });
}

export const handler = {
  info() {
    return {
      name: "conformance",
      version: "1.0.0",
      description: "conformance policy (JavaScript)",
    };
  },

  init(config) {
    // Unknown keys first, then the value of `key` (the last one wins if it
    // repeats), as the other builds do.
    const unknown = config.find(([name]) => name !== "key");
    if (unknown) throw `unknown config key \`${unknown[0]}\``;
    let key = DEFAULT_KEY;
    if (config.length > 0) {
      const value = config[config.length - 1][1];
      key = parseU32(value);
      if (key === null) throw `config key \`key\`: \`${value}\` is not a 32-bit number`;
    }
    state = newState(key);
    return {
      ports: [{ first: PORT_COUNT, last: PORT_PEEK }],
      mmio: [{ base: MMIO_BASE, len: MMIO_LEN }],
      msrs: [{ first: MSR_VALUE, last: MSR_NEXT }],
      cpuid: [],
      events: { memViolation: true },
      protect: [{ range: { base: GUARDED_PAGE, len: 0x1000n }, mode: "write-protect" }],
      capabilities: { protectMemory: true },
    };
  },

  handleExit(event) {
    state.count += 1n;
    const { tag, val } = event.kind;
    switch (tag) {
      case "io":
        return onIo(val);
      case "msr":
        return onMsr(val);
      case "mmio":
        return onMmio(val);
      case "mem-violation":
        return onMemViolation(val);
      default:
        return decline();
    }
  },

  cpuid(leaf) {
    return leaf;
  },

  saveState() {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, state.count, true);
    return bytes;
  },

  restoreState(saved) {
    if (saved.length !== 8) {
      throw `conformance: the state must be 8 bytes, got ${saved.length}`;
    }
    state.count = new DataView(saved.buffer, saved.byteOffset, 8).getBigUint64(0, true);
  },
};
