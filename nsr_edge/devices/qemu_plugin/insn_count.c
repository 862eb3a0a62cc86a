/*
 * nsr-edge: count guest AArch64 instructions between marker syscalls, by class (qemu-user TCG plugin, API v1).
 *
 * Built at set-up with the system compiler (`python -m nsr_edge.devices.arm_rootfs`):
 *     gcc -O2 -shared -fPIC -o insn_count.so insn_count.c
 * Used as `qemu-aarch64 -plugin insn_count.so -d plugin -D LOG ...`.
 *
 * The guest marks a region with lseek(-1, MAGIC | op, label), which fails harmlessly with EBADF
 * (nsr_edge.runtime.insn_markers): op 1 opens a region, op 2 closes it and writes one line to the log:
 *     region <n> label=<label> total=<t> scalar=<s> simd=<v> dot=<d> i8mm=<m> sve=<e>
 * Each translated block carries its per-class counts; a callback at block entry adds them while a region is open
 * and the block runs on the guest thread (vCPU) that opened it: instructions of other guest threads (a runtime's
 * helper threads) are not counted. A region counts the blocks entered between its two markers.
 *
 * Classes (decoded from the A64 encoding): sve (op0 bits 28:25 = 0010), dot (SDOT/UDOT vector and by element),
 * i8mm (SMMLA/UMMLA/USMMLA, USDOT vector, USDOT/SUDOT by element), simd (every other SIMD&FP data-processing
 * instruction, bits 28:25 = x111, and every SIMD&FP load/store, bits 28:25 = x1x0 with bit 26 set), scalar (the rest).
 *
 * The few plugin API declarations are written out here (from qemu 7.2's include/qemu/qemu-plugin.h, API version 1),
 * so no qemu or glib headers are needed.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_outs(const char *string);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

/* The marker: lseek (AArch64 Linux syscall 62) on fd -1 with this offset | op; whence carries a label. */
#define SYS_LSEEK 62
#define MARKER_MAGIC 0x4e5352450000ULL /* "NSRE" << 16: keep in sync with runtime/insn_markers.py */
#define MARKER_MASK 0xffffffffffff0000ULL
#define OP_START 1
#define OP_STOP 2

enum { C_TOTAL, C_SCALAR, C_SIMD, C_DOT, C_I8MM, C_SVE, N_CLASSES };
static const char *class_names[N_CLASSES] = {"total", "scalar", "simd", "dot", "i8mm", "sve"};

static uint64_t counts[N_CLASSES]; /* of the open region */
static volatile bool open_region;
static volatile unsigned int region_vcpu;
static uint64_t regions;
static uint64_t unmatched;

static int classify(uint32_t w)
{
    uint32_t op0 = (w >> 25) & 0xf;
    if (op0 == 0x2) {
        return C_SVE;
    }
    if ((w & 0x9fe0fc00u) == 0x0e809400u || (w & 0x9fc0f400u) == 0x0f80e000u) {
        return C_DOT; /* SDOT/UDOT (vector), SDOT/UDOT (by element) */
    }
    if ((w & 0xdfe0f400u) == 0x4e80a400u || (w & 0xbfe0fc00u) == 0x0e809c00u || (w & 0xbf40f400u) == 0x0f00f000u) {
        return C_I8MM; /* SMMLA/UMMLA/USMMLA, USDOT (vector), USDOT/SUDOT (by element) */
    }
    if ((op0 & 0x7) == 0x7) {
        return C_SIMD; /* SIMD&FP data processing */
    }
    if ((op0 & 0x5) == 0x4 && (w & (1u << 26))) {
        return C_SIMD; /* SIMD&FP loads and stores */
    }
    return C_SCALAR;
}

#ifndef NSR_EDGE_CLASSIFY_ONLY /* the tests compile classify() alone */
static void tb_exec(unsigned int vcpu, void *udata)
{
    if (open_region && vcpu == region_vcpu) {
        const uint32_t *n = udata;
        for (int c = 0; c < N_CLASSES; c++) {
            counts[c] += n[c];
        }
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uint32_t *n = calloc(N_CLASSES, sizeof(uint32_t)); /* lives as long as the block may run: never freed */
    if (!n) {
        return;
    }
    size_t k = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < k; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t w = 0;
        size_t size = qemu_plugin_insn_size(insn);
        memcpy(&w, qemu_plugin_insn_data(insn), size < 4 ? size : 4);
        n[classify(w)]++;
    }
    n[C_TOTAL] = (uint32_t)k;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, n);
}

static void syscall_cb(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    char line[512];
    if (num != SYS_LSEEK || (uint32_t)a1 != 0xffffffffu || (a2 & MARKER_MASK) != MARKER_MAGIC) {
        return;
    }
    uint64_t op = a2 & 0xffff;
    if (op == OP_START) {
        if (open_region) {
            unmatched++;
        }
        memset(counts, 0, sizeof(counts));
        region_vcpu = vcpu;
        open_region = true;
    } else if (op == OP_STOP) {
        if (!open_region || vcpu != region_vcpu) {
            unmatched++;
            return;
        }
        open_region = false;
        int len = snprintf(line, sizeof(line), "nsr-edge-insn region %" PRIu64 " label=%" PRIu64, regions++,
                           (uint64_t)(uint32_t)a3);
        for (int c = 0; c < N_CLASSES; c++) {
            len += snprintf(line + len, sizeof(line) - len, " %s=%" PRIu64, class_names[c], counts[c]);
        }
        snprintf(line + len, sizeof(line) - len, "\n");
        qemu_plugin_outs(line);
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    char line[128];
    snprintf(line, sizeof(line), "nsr-edge-insn done regions=%" PRIu64 " unmatched=%" PRIu64 "\n", regions, unmatched);
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    if (info->system_emulation || strcmp(info->target_name, "aarch64") != 0) {
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, syscall_cb);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
#endif
