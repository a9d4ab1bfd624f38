// Moved to <uniattn/calib/calibrate.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/calib/calibrate.h"
