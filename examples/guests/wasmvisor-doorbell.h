/* wasmvisor-doorbell.h - the wasmvisor doorbell for x86-64 guests in C.
 * The convention is documented in docs/doorbell.md.
 *
 * A call is one 32-bit OUT to DOORBELL_PORT with EAX = the call number,
 * arguments in RBX, RCX, RSI, RDI; the listener (a policy) answers with
 * RAX = status, RBX = result. If no policy answered, RAX still holds the
 * call number, which is never a status (wb_nobody_listening()).
 *
 *     uint64_t len;
 *     uint64_t st = wb_call(WB_GET_INPUT, (uint64_t)buf, sizeof buf, 0, 0, &len);
 *     if (wb_nobody_listening(st, WB_GET_INPUT)) ...
 *     else if (st != WB_OK) ...
 *
 * At CPL3 the OUT needs the port in the TSS I/O permission bitmap (or
 * IOPL 3 where the backend honours it); see docs/doorbell.md.
 */
#ifndef WASMVISOR_DOORBELL_H
#define WASMVISOR_DOORBELL_H

#include <stdint.h>

#define DOORBELL_PORT 0x0ad0
#define DOORBELL_ABI_VERSION 1 /* HELLO's arg0 */

/* Call numbers: 0x57420000 ("WB") | n. */
#define WB_HELLO 0x57420001u     /* a0 = ABI version -> listener version */
#define WB_SNAPSHOT 0x57420002u  /* ready: the listener may take its baseline */
#define WB_GET_INPUT 0x57420003u /* a0 = buffer GVA, a1 = capacity -> length */
#define WB_DONE 0x57420004u      /* a0 = result code; normally never returns */
#define WB_CRASH 0x57420005u     /* a0 = vector/kind, a1 = RIP, a2 = extra */
#define WB_LOG 0x57420006u       /* a0 = GVA of bytes, a1 = length */

/* Statuses. */
#define WB_OK 0
#define WB_UNKNOWN_CALL 1
#define WB_BAD_ARGUMENT 2
#define WB_BAD_ADDRESS 3
#define WB_NO_INPUT 4 /* GET_INPUT: no more input */

/* Make one call. Returns the status (RAX); stores the result (RBX) in
 * *result unless result is NULL. "memory" because GET_INPUT writes the
 * buffer behind the compiler's back. */
static inline uint64_t wb_call(uint32_t call, uint64_t a0, uint64_t a1,
                               uint64_t a2, uint64_t a3, uint64_t *result)
{
    uint64_t rax = call, rbx = a0;
    __asm__ volatile("outl %%eax, %%dx"
                     : "+a"(rax), "+b"(rbx)
                     : "d"((uint16_t)DOORBELL_PORT), "c"(a1), "S"(a2), "D"(a3)
                     : "memory");
    if (result)
        *result = rbx;
    return rax;
}

/* True when nobody answered `call`: RAX came back as the call number. */
static inline int wb_nobody_listening(uint64_t status, uint32_t call)
{
    return status == call;
}

#endif /* WASMVISOR_DOORBELL_H */
