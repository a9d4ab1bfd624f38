// Moved to <uniattn/config/model_config.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/config/model_config.h"
