// poisonctl: error messages, usage errors, size arguments, and what goes to
// standard output (human sizes, JSON strings, write(2) after stdio).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {

int error(const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", kTool, message.c_str());
  return kExitError;
}

// "Invalid argument (EINVAL)": the text and the name, so that both a reader
// and a script find what they look for.
std::string errno_text(int err) {
  std::string text = std::strerror(err);
  if (const char* name = strerrorname_np(err)) text += std::string(" (") + name + ")";
  return text;
}

int usage_error(std::string_view command, const std::string& message, std::string_view synopsis) {
  std::fprintf(stderr, "%s: %.*s: %s\n", kTool, static_cast<int>(command.size()), command.data(),
               message.c_str());
  std::fprintf(stderr, "usage: %s %.*s\n", kTool, static_cast<int>(synopsis.size()),
               synopsis.data());
  return kExitUsage;
}

int parse_json_target(std::string_view command, std::string_view synopsis, std::string_view what,
                      const std::vector<std::string>& args, bool& json, std::string& target) {
  for (const auto& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(synopsis.size()), synopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error(command, "unknown option '" + a + "'", synopsis);
    } else if (!target.empty()) {
      return usage_error(command, "expected one " + std::string(what), synopsis);
    } else {
      target = a;
    }
  }
  if (target.empty()) return usage_error(command, "missing " + std::string(what), synopsis);
  return -1;
}

std::string bytes_and_human(uint64_t n) {
  return n < 1024 ? std::to_string(n) + " bytes" : std::to_string(n) + " bytes (" + human_bytes(n) + ")";
}

std::string aligned_rows(const std::vector<std::pair<std::string, std::string>>& rows) {
  size_t width = 0;
  for (const auto& [k, v] : rows) width = std::max(width, k.size());
  std::string out;
  for (const auto& [k, v] : rows) out += k + ":" + std::string(width - k.size() + 1, ' ') + v + "\n";
  return out;
}

Result<uint64_t> parse_size_arg(const std::string& what, const std::string& text) {
  auto v = parse_size(text);
  if (!v) return fail(v.error().code, what + ": " + v.error().to_string());
  return v;
}

std::string json_string(std::string_view s) {
  std::string out;
  append_json_string(out, s);
  return out;
}

void append_u64(std::string& out, uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

void append_json_string(std::string& out, std::string_view s) {
  // Most names need no escape: then one copy.
  auto plain_byte = [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c >= 0x20 && c != '"' && c != '\\';
  };
  if (std::all_of(s.begin(), s.end(), plain_byte)) {
    out += '"';
    out += s;
    out += '"';
    return;
  }
  out += '"';
  size_t plain = 0;  // start of the run of bytes that need no escape
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + plain, i - plain);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    }
    plain = i + 1;
  }
  out.append(s.data() + plain, s.size() - plain);
  out += '"';
}

namespace {

// Writes `out` to standard output with write(2), after what stdio holds:
// no second copy through stdio's 4 KiB buffer (two system calls per 16 KiB
// flushed). 0, or the errno of the failure.
int write_all_stdout(std::string_view out) {
  if (std::fflush(stdout) != 0) return errno != 0 ? errno : EIO;
  while (!out.empty()) {
    ssize_t n = ::write(STDOUT_FILENO, out.data(), out.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    out.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

}  // namespace

int write_stdout(std::string_view out) {
  if (int err = write_all_stdout(out))
    return error(std::string("write error: ") + std::strerror(err));
  return 0;
}

void OutBuf::flush() {
  if (!write_failed_) write_errno_ = write_all_stdout(view());
  write_failed_ = write_errno_ != 0;
  at_ = buf_;
}

int OutBuf::finish() {
  if (write_failed_) return error(std::string("write error: ") + std::strerror(write_errno_));
  return write_stdout(view());
}

}  // namespace poisonfs::ctl
