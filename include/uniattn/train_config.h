// Moved to <uniattn/config/train_config.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/config/train_config.h"
