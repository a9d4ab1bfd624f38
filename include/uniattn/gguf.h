// Moved to <uniattn/io/gguf.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/io/gguf.h"
