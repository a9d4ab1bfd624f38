// Moved to <uniattn/config/superblock.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/config/superblock.h"
