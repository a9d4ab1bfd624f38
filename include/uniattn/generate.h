// Moved to <uniattn/infer/generate.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/infer/generate.h"
