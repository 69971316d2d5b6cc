// Reading a whole input file the driver was given (text, token ids, JSON) without blocking on a
// FIFO or device: opened non-blocking, refused unless it is a regular file, then read.
#pragma once

#include <string>

namespace kvfuse::model {

// The file's bytes; std::runtime_error naming the path when it cannot be opened, is not a
// regular file (a FIFO, a directory, a device) or cannot be read.
std::string read_regular_file(const std::string& path);

}  // namespace kvfuse::model
