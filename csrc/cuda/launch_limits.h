#pragma once
#include "common/launch_plans.h"

namespace litesam {
// The launch limits of a CUDA device (grid dimensions and opt-in shared memory queried once per
// device, the default scratch budget), or the override when one is set (common/launch_plans.h).
LaunchLimits device_launch_limits(int device);
}  // namespace litesam
