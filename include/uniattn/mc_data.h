// Moved to <uniattn/data/mc_data.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/data/mc_data.h"
