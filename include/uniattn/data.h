// Moved to <uniattn/data/records.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/data/records.h"
