// Moved to <uniattn/infer/sampling.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/infer/sampling.h"
