// Moved to <uniattn/model/kv_cache.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/model/kv_cache.h"
