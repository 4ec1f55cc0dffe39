// Device limits for the launch plans, queried from the driver once per device instead of assumed
// (an Ampere/Ada GPU has 99 KB of opt-in shared memory per block, Hopper 227 KB).
#include "cuda/launch_limits.h"

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

#include <array>
#include <mutex>

namespace litesam {
namespace {

constexpr int kMaxDevices = 64;

LaunchLimits query_device(int device) {
  auto attribute = [device](cudaDeviceAttr attr) {
    int value = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
    return static_cast<int64_t>(value);
  };
  LaunchLimits limits;
  limits.max_grid_x = attribute(cudaDevAttrMaxGridDimX);
  limits.max_grid_y = attribute(cudaDevAttrMaxGridDimY);
  limits.max_grid_z = attribute(cudaDevAttrMaxGridDimZ);
  limits.shared_optin_bytes = attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  limits.scratch_budget_bytes = kDefaultScratchBudgetBytes;
  return limits;
}

}  // namespace

LaunchLimits device_launch_limits(int device) {
  if (const auto forced = launch_limits_override()) return *forced;
  TORCH_CHECK_VALUE(device >= 0 && device < kMaxDevices, "CUDA device index ", device, " out of range");
  static std::array<std::once_flag, kMaxDevices> once;
  static std::array<LaunchLimits, kMaxDevices> cache;
  std::call_once(once[device], [device] { cache[device] = query_device(device); });
  return cache[device];
}

}  // namespace litesam
