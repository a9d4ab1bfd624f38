// Moved to <uniattn/model/checkpoint.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/model/checkpoint.h"
