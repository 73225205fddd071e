// poisonctl events: the daemon's log of failures, repairs and recoveries,
// as it sends it (JSON lines) or as text, once or followed.
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {

// ---- events ----------------------------------------------------------------------

namespace {

// Just enough JSON for the daemon's event lines: objects, arrays, strings,
// numbers (kept as text, so "1712345678.123456789" loses nothing), literals.
struct JsonValue {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  std::string text;  // number or string
  bool boolean = false;
  std::vector<JsonValue> items;
  std::vector<std::pair<std::string, JsonValue>> fields;

  const JsonValue* get(std::string_view key) const {
    for (const auto& [k, v] : fields) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  std::string str(std::string_view key) const {
    const JsonValue* v = get(key);
    return v && (v->kind == kString || v->kind == kNumber) ? v->text : std::string{};
  }
  uint64_t u64(std::string_view key) const {
    const JsonValue* v = get(key);
    uint64_t n = 0;
    if (v && v->kind == kNumber)
      std::from_chars(v->text.data(), v->text.data() + v->text.size(), n);
    return n;
  }
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view s) : s_(s) {}
  bool parse(JsonValue* out) {
    if (!value(out, 0)) return false;
    ws();
    return i_ == s_.size();
  }

 private:
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r'))
      ++i_;
  }
  bool take(char c) {
    ws();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool string(std::string* out) {
    if (!take('"')) return false;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (i_ >= s_.size()) return false;
      char e = s_[i_++];
      switch (e) {
        case 'n':
          *out += '\n';
          break;
        case 't':
          *out += '\t';
          break;
        case 'r':
          *out += '\r';
          break;
        case 'b':
          *out += '\b';
          break;
        case 'f':
          *out += '\f';
          break;
        case 'u': {
          if (i_ + 4 > s_.size()) return false;
          unsigned v = 0;
          auto [p, ec] = std::from_chars(s_.data() + i_, s_.data() + i_ + 4, v, 16);
          if (ec != std::errc() || p != s_.data() + i_ + 4) return false;
          i_ += 4;
          *out += v < 0x80 ? static_cast<char>(v) : '?';
          break;
        }
        default:
          *out += e;
      }
    }
    return i_++ < s_.size();
  }
  bool value(JsonValue* v, int depth) {
    if (depth > 16) return false;
    ws();
    if (i_ >= s_.size()) return false;
    char c = s_[i_];
    if (c == '"') {
      v->kind = JsonValue::kString;
      return string(&v->text);
    }
    if (c == '{') {
      ++i_;
      v->kind = JsonValue::kObject;
      if (take('}')) return true;
      do {
        std::string key;
        JsonValue item;
        if (!string(&key) || !take(':') || !value(&item, depth + 1)) return false;
        v->fields.emplace_back(std::move(key), std::move(item));
      } while (take(','));
      return take('}');
    }
    if (c == '[') {
      ++i_;
      v->kind = JsonValue::kArray;
      if (take(']')) return true;
      do {
        JsonValue item;
        if (!value(&item, depth + 1)) return false;
        v->items.push_back(std::move(item));
      } while (take(','));
      return take(']');
    }
    for (std::string_view word : {"true", "false", "null"}) {
      if (s_.substr(i_).starts_with(word)) {
        i_ += word.size();
        v->kind = word == "null" ? JsonValue::kNull : JsonValue::kBool;
        v->boolean = word == "true";
        return true;
      }
    }
    size_t start = i_;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '.' ||
                              s_[i_] == '-' || s_[i_] == '+' || s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
    }
    if (i_ == start) return false;
    v->kind = JsonValue::kNumber;
    v->text.assign(s_.substr(start, i_ - start));
    return true;
  }

  std::string_view s_;
  size_t i_ = 0;
};

// "2024-05-01 12:00:00.123" (local time) from "SECONDS.NANOSECONDS".
std::string event_time(const std::string& text) {
  int64_t sec = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), sec);
  if (ec != std::errc()) return text;
  std::string frac = p < text.data() + text.size() && *p == '.'
                         ? std::string(p + 1, text.data() + text.size())
                         : "";
  frac = (frac + "000").substr(0, 3);
  time_t t = static_cast<time_t>(sec);
  struct tm tm {};
  if (!localtime_r(&t, &tm)) return text;
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return std::string(buf) + "." + frac;
}

// One event as a line, and one indented line per owner it hit.
std::string event_human(std::string_view line) {
  JsonValue e;
  if (!JsonParser(line).parse(&e) || e.kind != JsonValue::kObject)
    return "? " + std::string(line) + "\n";
  uint64_t length = e.u64("length");
  std::string out = event_time(e.str("time")) + "  #" + e.str("seq") + "  " + e.str("kind");
  out += length ? "  device " + inclusive(e.u64("device_offset"), length) + " (" +
                      std::to_string(length) + " bytes)"
                : std::string("  device -");
  out += "  " + e.str("action") + "\n";
  if (const JsonValue* owners = e.get("owners"); owners && owners->kind == JsonValue::kArray) {
    for (const JsonValue& o : owners->items) {
      std::string what = o.str("what");
      out += "    " + (what == "free" ? std::string("free space") : what);
      if (uint64_t ino = o.u64("inode")) out += " inode " + std::to_string(ino);
      if (std::string path = o.str("path"); !path.empty()) out += " " + path;
      if (what == "data") {
        uint64_t n = o.u64("length");
        out += " file " + inclusive(o.u64("file_offset"), n) + " (" + std::to_string(n) + " bytes)";
      }
      out += "\n";
    }
  }
  return out;
}

volatile sig_atomic_t g_stop = 0;
void on_stop(int) { g_stop = 1; }

}  // namespace

int cmd_events(const std::vector<std::string>& args) {
  bool json = false, follow = false;
  std::string target;
  for (const auto& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "--follow" || a == "-f") {
      follow = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kEventsSynopsis.size()),
                  kEventsSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("events", "unknown option '" + a + "'", kEventsSynopsis);
    } else if (!target.empty()) {
      return usage_error("events", "expected one MOUNTPOINT", kEventsSynopsis);
    } else {
      target = a;
    }
  }
  if (target.empty()) return usage_error("events", "missing MOUNTPOINT", kEventsSynopsis);
  Target where = resolve_target(target);
  if (where.mountpoint.empty()) {
    struct stat st {};
    if (stat(target.c_str(), &st) != 0) return error(target + ": " + errno_text(errno));
    return error(
        target +
        " is not a mounted poisonfs: the event log lives in the daemon (mount the image first)");
  }
  if (follow) {
    struct sigaction sa {};
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
  }
  auto page = std::make_unique<poisonfs_events>();
  uint64_t after = 0, dropped_told = 0;
  while (!g_stop) {
    // A descriptor per poll: a follower must not keep the mount busy.
    Fd fd(open_for_control(where.mountpoint));
    if (!fd) return error(where.mountpoint + ": cannot open: " + errno_text(errno));
    for (;;) {
      std::memset(page.get(), 0, offsetof(poisonfs_events, buf));
      page->after_seq = after;
      if (ioctl(fd.get(), POISONFS_IOC_EVENTS, page.get()) != 0) {
        int err = errno;
        if (g_stop && err == EINTR) break;
        return error(
            ioctl_failed(where.mountpoint, "POISONFS_IOC_EVENTS", err, "read the event log"));
      }
      page->buf[sizeof page->buf - 1] = '\0';
      std::string out;
      if (page->dropped > std::max(after, dropped_told)) {
        uint64_t missed = page->dropped - std::max(after, dropped_told);
        std::string message = std::to_string(missed) +
                              (missed == 1 ? " older event was" : " older events were") +
                              " dropped (the daemon keeps a bounded history)";
        if (json)
          std::fprintf(stderr, "%s: %s\n", kTool, message.c_str());
        else
          out += "(" + message + ")\n";
        dropped_told = page->dropped;
      }
      std::string_view text(page->buf);
      if (json) {
        out += text;
      } else {
        while (!text.empty()) {
          size_t nl = text.find('\n');
          std::string_view line = text.substr(0, nl);
          if (!line.empty()) out += event_human(line);
          text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        }
      }
      if (int rc = write_stdout(out)) return rc;
      bool progressed = page->last_seq > after;
      after = std::max(after, page->last_seq);
      if ((page->flags & POISONFS_OF_LAST) || !progressed) break;
    }
    if (!follow) break;
    for (int i = 0; i < 4 && !g_stop; ++i) usleep(50'000);  // 200 ms, woken early by a signal
  }
  return 0;
}

}  // namespace poisonfs::ctl
