/* The hooks TVM's kernels call, for a DSP without the TVM runtime.
 *
 * TVM's code generator reaches its runtime through function-pointer variables that a loader
 * normally fills in (weak definitions in model_hvx.o). Defining them here, with the same
 * names, makes the static link resolve them to these functions:
 *   - workspace allocation: a stack in a static arena (kernels free in reverse order);
 *   - parallel launch: the task runs on this thread (the driver is single-threaded);
 *   - the device-setting call TVM emits before each kernel on a non-CPU target: nothing to
 *     do on the DSP, so the lookup gives a dummy handle and the call returns success. */
#include "qc_runtime.h"

qc_any qc_result;

static uint8_t qc_arena[QC_WORKSPACE_BYTES] __attribute__((aligned(128)));
static uint32_t qc_arena_top;

static void* qc_alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  uint64_t size = (nbytes + 127u) & ~(uint64_t)127u;
  (void)device_type, (void)device_id, (void)code, (void)bits;
  if (qc_arena_top + size > QC_WORKSPACE_BYTES) return 0;   /* the kernel reports the failure */
  void* block = qc_arena + qc_arena_top;
  qc_arena_top += (uint32_t)size;
  return block;
}

static int qc_free_workspace(int device_type, int device_id, void* ptr) {
  (void)device_type, (void)device_id;
  qc_arena_top = (uint32_t)((uint8_t*)ptr - qc_arena);     /* last in, first out */
  return 0;
}

typedef struct { void* sync_handle; int32_t num_task; } qc_parallel_env;
typedef int (*qc_parallel_lambda)(int task_id, qc_parallel_env* env, void* cdata);

static int qc_parallel_launch(qc_parallel_lambda lambda, void* cdata, int num_task) {
  qc_parallel_env env = {0, 1};
  (void)num_task;
  return lambda(0, &env, cdata);
}

static int qc_parallel_barrier(int task_id, qc_parallel_env* env) {
  (void)task_id, (void)env;
  return 0;
}

static int qc_lookup(void* library, const char* name, void** out) {
  (void)library, (void)name;
  *out = (void*)1;
  return 0;
}

static int qc_call(void* function, qc_any* args, int32_t num_args, qc_any* result) {
  (void)function, (void)args, (void)num_args, (void)result;
  return 0;
}

static int qc_init_once(void** handle, int (*init)(void** result)) {
  return *handle ? 0 : init(handle);
}

void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = qc_alloc_workspace;
int (*__TVMBackendFreeWorkspace)(int, int, void*) = qc_free_workspace;
int (*__TVMBackendParallelLaunch)(qc_parallel_lambda, void*, int) = qc_parallel_launch;
int (*__TVMBackendParallelBarrier)(int, qc_parallel_env*) = qc_parallel_barrier;
int (*__TVMFFIEnvModLookupFromImports)(void*, const char*, void**) = qc_lookup;
int (*__TVMFFIFunctionCall)(void*, qc_any*, int32_t, qc_any*) = qc_call;
int (*__TVMFFIHandleInitOnce)(void**, int (*)(void**)) = qc_init_once;
void* __tvm_ffi__library_ctx = 0;
