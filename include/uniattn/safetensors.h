// Moved to <uniattn/io/safetensors.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/io/safetensors.h"
