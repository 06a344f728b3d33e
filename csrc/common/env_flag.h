// Run-time switches from environment variables (the MOM_OPS_* table in README.md), read at each call.
#pragma once

#include <cstdlib>
#include <cstring>

namespace mom_ops {

// Whether the variable is set to exactly `value`.
inline bool env_is(const char* name, const char* value) {
  const char* env = std::getenv(name);
  return env != nullptr && std::strcmp(env, value) == 0;
}

}  // namespace mom_ops
