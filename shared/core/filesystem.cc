#include "shared/core/filesystem.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

namespace certfleet::shared {
namespace {

Status ErrnoStatus(std::string_view what, const std::string& path, int err) {
  Code code = Code::kInternal;
  if (err == ENOENT) code = Code::kNotFound;
  if (err == EEXIST) code = Code::kAlreadyExists;
  if (err == EACCES || err == EPERM) code = Code::kPermissionDenied;
  if (err == ENOSPC || err == EDQUOT) code = Code::kResourceExhausted;
  return Status(code, std::string(what) + " " + path + ": " + std::strerror(err));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status FsyncDir(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus("open directory", dir, errno);
  if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync directory", dir, errno);
  return Status::Ok();
}

// Writes data to a fresh file at `path` created with O_EXCL and `mode`, fsync'd.
Status WriteNewFile(const std::string& path, std::string_view data, mode_t mode) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (fd.get() < 0) return ErrnoStatus("create", path, errno);
  // The umask may have removed bits; it can never add any, so the mode is at most `mode`.
  Status st = WriteAll(fd.get(), data, path);
  if (st.ok() && ::fsync(fd.get()) != 0) st = ErrnoStatus("fsync", path, errno);
  int raw = fd.Release();
  if (::close(raw) != 0 && st.ok()) st = ErrnoStatus("close", path, errno);
  if (!st.ok()) ::unlink(path.c_str());
  return st;
}

std::string TempName(const std::string& path) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  std::string dir = DirName(path);
  std::string base = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
  return JoinPath(dir, "." + base + ".tmp-" + buf);
}

}  // namespace

std::string JoinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  std::string out(a);
  if (out.back() != '/') out += '/';
  while (!b.empty() && b.front() == '/') b.remove_prefix(1);
  out += b;
  return out;
}

std::string DirName(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

PosixFilesystem& PosixFilesystem::Instance() {
  static PosixFilesystem fs;
  return fs;
}

Result<std::string> PosixFilesystem::ReadFile(const std::string& path, size_t max_bytes) const {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Error(ErrnoStatus("open", path, errno));
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error(ErrnoStatus("read", path, errno));
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      return Error(Code::kResourceExhausted, "file too large: " + path);
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status PosixFilesystem::WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = TempName(path);
  Status st = WriteNewFile(tmp, data, mode);
  if (!st.ok()) return st;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus("rename to", path, err);
  }
  return FsyncDir(DirName(path));
}

Status PosixFilesystem::CreateFileExclusive(const std::string& path, std::string_view data, mode_t mode) {
  // Write under a temporary name, then link() it into place: link fails with EEXIST
  // if the target exists, so the target appears complete or not at all.
  std::string tmp = TempName(path);
  Status st = WriteNewFile(tmp, data, mode);
  if (!st.ok()) return st;
  int rc = ::link(tmp.c_str(), path.c_str());
  int err = errno;
  ::unlink(tmp.c_str());
  if (rc != 0) return ErrnoStatus("create", path, err);
  return FsyncDir(DirName(path));
}

Status PosixFilesystem::MakeDirs(const std::string& path, mode_t mode) {
  if (path.empty()) return Status(Code::kInvalidArgument, "empty directory path");
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    cur = path.substr(0, pos);
    if (cur.empty()) continue;
    bool last = pos == std::string::npos || pos + 1 == path.size();
    if (::mkdir(cur.c_str(), last ? mode : 0755) != 0 && errno != EEXIST) {
      return ErrnoStatus("mkdir", cur, errno);
    }
    if (last) break;
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("stat", path, errno);
  if (!S_ISDIR(st.st_mode)) return Status(Code::kFailedPrecondition, path + " is not a directory");
  if ((st.st_mode & 07777 & ~mode) != 0) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " has mode %04o, more open than %04o", st.st_mode & 07777, mode);
    return Status(Code::kPermissionDenied, path + buf);
  }
  return Status::Ok();
}

bool PosixFilesystem::Exists(const std::string& path) const {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

Status PosixFilesystem::Remove(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return ErrnoStatus("remove", path, errno);
  return FsyncDir(DirName(path));
}

Result<std::vector<std::string>> PosixFilesystem::List(const std::string& dir) const {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return Error(ErrnoStatus("open directory", dir, errno));
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    names.push_back(std::move(name));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// ---- MemFilesystem ----

Result<std::string> MemFilesystem::ReadFile(const std::string& path, size_t max_bytes) const {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  if (it == files_.end()) return Error(Code::kNotFound, "open " + path + ": no such file");
  if (it->second.data.size() > max_bytes) return Error(Code::kResourceExhausted, "file too large: " + path);
  return it->second.data;
}

Status MemFilesystem::WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) {
  std::lock_guard lock(mu_);
  if (fail_writes_) return Status(Code::kResourceExhausted, "write " + path + ": No space left on device");
  files_[path] = File{std::string(data), mode};
  return Status::Ok();
}

Status MemFilesystem::CreateFileExclusive(const std::string& path, std::string_view data, mode_t mode) {
  std::lock_guard lock(mu_);
  if (fail_writes_) return Status(Code::kResourceExhausted, "write " + path + ": No space left on device");
  if (files_.count(path) != 0) return Status(Code::kAlreadyExists, "create " + path + ": File exists");
  files_[path] = File{std::string(data), mode};
  return Status::Ok();
}

Status MemFilesystem::MakeDirs(const std::string& path, mode_t mode) {
  std::lock_guard lock(mu_);
  dirs_.emplace(path, mode);
  return Status::Ok();
}

bool MemFilesystem::Exists(const std::string& path) const {
  std::lock_guard lock(mu_);
  return files_.count(path) != 0 || dirs_.count(path) != 0;
}

Status MemFilesystem::Remove(const std::string& path) {
  std::lock_guard lock(mu_);
  if (files_.erase(path) == 0) return Status(Code::kNotFound, "remove " + path + ": no such file");
  return Status::Ok();
}

Result<std::vector<std::string>> MemFilesystem::List(const std::string& dir) const {
  std::lock_guard lock(mu_);
  std::vector<std::string> names;
  std::string prefix = dir.empty() || dir.back() == '/' ? dir : dir + "/";
  for (const auto& [path, file] : files_) {
    if (path.rfind(prefix, 0) == 0 && path.find('/', prefix.size()) == std::string::npos) {
      names.push_back(path.substr(prefix.size()));
    }
  }
  return names;
}

}  // namespace certfleet::shared
