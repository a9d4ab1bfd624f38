// Moved to <uniattn/eval/eval.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/eval/eval.h"
