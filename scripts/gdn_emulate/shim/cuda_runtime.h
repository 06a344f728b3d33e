// Host shim: CUDA builtins for running the gdn kernels on the CPU, one ucontext fiber per CUDA thread.
#pragma once
#include "emu_core.h"
