// Moved to <uniattn/train/train.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/train/train.h"
