/* What a hosted C library would give the driver and kernels, for a freestanding test binary
 * run under qemu-hexagon (Linux user mode): system calls through trap0, and the few library
 * functions LLVM emits calls to. On a device with the Hexagon SDK, its C library has these
 * instead: this file is for the qemu test binary only. */
#include <stddef.h>
#include <stdint.h>

long qc_syscall3(long number, long a, long b, long c) {
  register long r0 __asm__("r0") = a;
  register long r1 __asm__("r1") = b;
  register long r2 __asm__("r2") = c;
  register long r6 __asm__("r6") = number;
  __asm__ volatile("trap0(#1)" : "+r"(r0) : "r"(r1), "r"(r2), "r"(r6) : "memory");
  return r0;
}

/* Linux's generic system call numbers (Hexagon uses the asm-generic table). */
#define QC_SYS_READ 63
#define QC_SYS_WRITE 64
#define QC_SYS_EXIT 93

/* Reads exactly n bytes (or to end of input); returns the bytes read. */
long qc_read_all(int fd, void* buffer, long n) {
  long done = 0;
  while (done < n) {
    long got = qc_syscall3(QC_SYS_READ, fd, (long)((char*)buffer + done), n - done);
    if (got <= 0) break;
    done += got;
  }
  return done;
}

long qc_write_all(int fd, const void* buffer, long n) {
  long done = 0;
  while (done < n) {
    long put = qc_syscall3(QC_SYS_WRITE, fd, (long)((const char*)buffer + done), n - done);
    if (put <= 0) break;
    done += put;
  }
  return done;
}

void qc_exit(int code) {
  qc_syscall3(QC_SYS_EXIT, code, 0, 0);
  for (;;) {}
}

void* memcpy(void* dst, const void* src, size_t n) {
  unsigned char* d = dst;
  const unsigned char* s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void* memmove(void* dst, const void* src, size_t n) {
  unsigned char* d = dst;
  const unsigned char* s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}

void* memset(void* dst, int value, size_t n) {
  unsigned char* d = dst;
  while (n--) *d++ = (unsigned char)value;
  return dst;
}

/* Round to nearest, ties to even (the quantizers' rounding): adding and subtracting 2^23
 * rounds a float below 2^23 in magnitude to an integer in the default rounding mode. */
float nearbyintf(float x) {
  const float big = 8388608.0f;
  volatile float y;   /* keep the compiler from folding the two steps */
  if (!(x < big && x > -big)) return x;   /* already an integer, or NaN */
  if (x >= 0) {
    y = x + big;
    return y - big;
  }
  y = x - big;
  return y + big;
}

float rintf(float x) { return nearbyintf(x); }

/* LLVM's Hexagon backend calls this for copies it knows are large and 8-byte aligned
 * (compiler-rt has it; Debian's clang ships no Hexagon compiler-rt). */
void* __hexagon_memcpy_likely_aligned_min32bytes_mult8bytes(void* dst, const void* src, size_t n) {
  return memcpy(dst, src, n);
}
