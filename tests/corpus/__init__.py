# A package, so that pytest puts tests/ on sys.path and not this folder: here, the folder
# torch/ (exported models) would stand in for the torch package, which tvm_ffi imports when it
# can (`module 'torch' has no attribute 'int8'`).
