// The CUDA kernels' launch plans on any build (common/launch_plans.h), so the CPU tests check every
// grid, chunk, shared-memory and scratch size at the boundaries; and the device limits they use.
//   _launch_plan(kernel, sizes, limits) -> the plan as a list (fields: launch_plans.h)
//   _launch_limits(device) -> [max_grid_x, max_grid_y, max_grid_z, shared_optin_bytes, scratch_budget_bytes]
//   _set_launch_limits_override(limits) -> replace the device's limits in every launch ([] restores them)
#include <torch/library.h>

#include "common/launch_plans.h"
#ifdef WITH_CUDA
#include "cuda/launch_limits.h"
#endif

namespace {

std::vector<int64_t> launch_plan(c10::string_view kernel, c10::ArrayRef<int64_t> sizes, c10::ArrayRef<int64_t> limits) {
  return litesam::launch_plan_by_name(std::string(kernel), sizes, limits);
}

std::vector<int64_t> launch_limits(int64_t device) {
  if (const auto forced = litesam::launch_limits_override()) return forced->to_vector();
#ifdef WITH_CUDA
  return litesam::device_launch_limits(static_cast<int>(device)).to_vector();
#else
  TORCH_CHECK_VALUE(false, "litesam_kernels._C was built without CUDA: no device launch limits (device ", device, ")");
#endif
}

void set_launch_limits_override(c10::ArrayRef<int64_t> limits) {
  if (limits.empty()) {
    litesam::set_launch_limits_override(std::nullopt);
  } else {
    litesam::set_launch_limits_override(litesam::LaunchLimits::from(limits));
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(litesam, m) {
  m.def("_launch_plan(str kernel, int[] sizes, int[] limits) -> int[]", &launch_plan);
  m.def("_launch_limits(int device) -> int[]", &launch_limits);
  m.def("_set_launch_limits_override(int[] limits) -> ()", &set_launch_limits_override);
}
