// Moved to <uniattn/io/tokenizer.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/io/tokenizer.h"
