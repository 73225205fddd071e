// The one error type of the core: a POSIX error code (std::errc, whose values
// are the errno numbers) plus an optional human message. Cheap when there is
// no message. Only the FUSE adapter and the tools turn it into an errno or a
// line on stderr.
#pragma once

#include <expected>
#include <string>
#include <system_error>

namespace poisonfs {

struct Error {
  std::errc code;
  std::string message;  // empty for the common, self-explaining cases

  int errno_value() const { return static_cast<int>(code); }
  // "message" when set, else strerror of the code.
  std::string to_string() const;
};

template <class T>
using Result = std::expected<T, Error>;
using Status = Result<void>;

inline std::unexpected<Error> fail(std::errc code, std::string message = {}) {
  return std::unexpected<Error>(Error{code, std::move(message)});
}

}  // namespace poisonfs
