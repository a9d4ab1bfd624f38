// Moved to <uniattn/model/causal_lm.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/model/causal_lm.h"
