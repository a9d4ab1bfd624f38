// Moved to <uniattn/io/file_io.h>; this forwarding header is kept for one release (0.2).
#pragma once
#include "uniattn/io/file_io.h"
