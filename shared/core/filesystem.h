// Filesystem seam. Production code writes through it so that tests can use an
// in-memory or fault-injecting implementation.
//
// WriteFileAtomic is the only way certfleet writes a file that matters: the data goes
// to a temporary file created with O_EXCL and its final mode (never chmod afterwards),
// is fsync'd, renamed over the target, and the directory is fsync'd. A reader sees the
// old content or the new, never a mix; a crash leaves at most a stray temporary file.
// Implementations are thread-safe.
#pragma once

#include <sys/types.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "shared/core/status.h"

namespace certfleet::shared {

class Filesystem {
 public:
  virtual ~Filesystem() = default;
  // kNotFound if missing; kResourceExhausted if larger than max_bytes.
  virtual Result<std::string> ReadFile(const std::string& path, size_t max_bytes = 16 << 20) const = 0;
  virtual Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) = 0;
  // Creates the file only if it does not exist yet (kAlreadyExists otherwise); same durability.
  virtual Status CreateFileExclusive(const std::string& path, std::string_view data, mode_t mode) = 0;
  // Creates the directory and parents; the last component gets `mode`. An existing
  // directory is accepted if its mode has no more bits than `mode`.
  virtual Status MakeDirs(const std::string& path, mode_t mode) = 0;
  virtual bool Exists(const std::string& path) const = 0;
  virtual Status Remove(const std::string& path) = 0;
  // Names (not paths) of the entries of a directory, sorted.
  virtual Result<std::vector<std::string>> List(const std::string& dir) const = 0;
};

class PosixFilesystem final : public Filesystem {
 public:
  Result<std::string> ReadFile(const std::string& path, size_t max_bytes) const override;
  Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) override;
  Status CreateFileExclusive(const std::string& path, std::string_view data, mode_t mode) override;
  Status MakeDirs(const std::string& path, mode_t mode) override;
  bool Exists(const std::string& path) const override;
  Status Remove(const std::string& path) override;
  Result<std::vector<std::string>> List(const std::string& dir) const override;
  static PosixFilesystem& Instance();
};

// In-memory filesystem for unit tests. Can be told to fail writes (disk full).
class MemFilesystem final : public Filesystem {
 public:
  struct File {
    std::string data;
    mode_t mode = 0;
  };
  Result<std::string> ReadFile(const std::string& path, size_t max_bytes) const override;
  Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) override;
  Status CreateFileExclusive(const std::string& path, std::string_view data, mode_t mode) override;
  Status MakeDirs(const std::string& path, mode_t mode) override;
  bool Exists(const std::string& path) const override;
  Status Remove(const std::string& path) override;
  Result<std::vector<std::string>> List(const std::string& dir) const override;

  void FailWrites(bool fail) {
    std::lock_guard lock(mu_);
    fail_writes_ = fail;
  }
  std::map<std::string, File> Snapshot() const {
    std::lock_guard lock(mu_);
    return files_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, File> files_;
  std::map<std::string, mode_t> dirs_;
  bool fail_writes_ = false;
};

// Joins path components with a single '/'.
std::string JoinPath(std::string_view a, std::string_view b);
std::string DirName(const std::string& path);

}  // namespace certfleet::shared
