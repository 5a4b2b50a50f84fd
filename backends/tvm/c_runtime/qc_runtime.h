/* qcompiler's C driver runtime: the types the generated driver (model.c) passes to TVM's
 * kernels, and the hooks those kernels call. Nothing of the TVM runtime is needed.
 *
 * The kernels keep TVM's packed calling convention,
 *     int32_t __tvm_ffi_<name>(void* self, qc_any* args, int32_t num_args, qc_any* result),
 * with each argument a DLTensor pointer (FFI type index 7). The structs below have the layout of
 * DLPack's DLTensor and TVM FFI's TVMFFIAny (tvm_ffi/c_api.h), which the kernels read. */
#ifndef QC_RUNTIME_H
#define QC_RUNTIME_H

#include <stdint.h>

typedef struct { int32_t device_type, device_id; } qc_device;      /* DLDevice */
typedef struct { uint8_t code, bits; uint16_t lanes; } qc_dtype;    /* DLDataType */

typedef struct {                                                     /* DLTensor */
  void* data;
  qc_device device;
  int32_t ndim;
  qc_dtype dtype;
  int64_t* shape;
  int64_t* strides;      /* NULL: compact row-major */
  uint64_t byte_offset;
} qc_tensor;

typedef struct {                                                     /* TVMFFIAny */
  int32_t type_index;
  uint32_t zero_padding;
  union { int64_t v_int64; void* v_ptr; } v;
} qc_any;

#define QC_DL_HEXAGON 16          /* DLPack's kDLHexagon */
#define QC_FFI_DLTENSOR_PTR 7     /* TVM FFI's kTVMFFIDLTensorPtr */

#define QC_TENSOR(data, ndim, code, bits, shape) \
  {(void*)(data), {QC_DL_HEXAGON, 0}, ndim, {code, bits, 1}, shape, 0, 0}
#define QC_ARG(tensor) {QC_FFI_DLTENSOR_PTR, 0, {.v_ptr = &(tensor)}}
#define QC_KERNEL(name) extern int32_t __tvm_ffi_##name(void*, qc_any*, int32_t, qc_any*)
#define QC_CALL(name, args) \
  __tvm_ffi_##name(0, (args), (int32_t)(sizeof(args) / sizeof((args)[0])), &qc_result)

extern qc_any qc_result;

/* Compiled with -DQC_TRACE, the driver hands each kernel's output to qc_trace(step, tensor)
 * (qcompiler's per-kernel check writes them out and compares each with the reference). */
#ifdef QC_TRACE
void qc_trace(int step, const qc_tensor* tensor);
#undef QC_TRACE
#define QC_TRACE(step, tensor) qc_trace(step, &(tensor))
#else
#define QC_TRACE(step, tensor) ((void)0)
#endif

/* Bytes of scratch memory the kernels may hold at once (TVMBackendAllocWorkspace); override
 * with -DQC_WORKSPACE_BYTES=... when compiling qc_runtime.c. */
#ifndef QC_WORKSPACE_BYTES
#define QC_WORKSPACE_BYTES (8u << 20)
#endif

#endif /* QC_RUNTIME_H */
