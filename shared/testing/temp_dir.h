// Test scratch space: a fresh directory per TempDir, made with mkdtemp under $TMPDIR
// (/tmp when TMPDIR is unset or empty) and removed with everything in it when the
// object is destroyed. Header-only, for the tests of every module.
//
// path() is empty when mkdtemp failed; tests check it before use. Each object owns its
// own directory, so tests that use one each can run in parallel. Removal is best effort
// and makes directories writable first, so a test may leave read-only ones behind.
// Symbolic links are removed, never followed. Not copyable.
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace certfleet::shared {

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/certfleet-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (!path_.empty()) RemoveTree(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  static void RemoveTree(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return;
    if (!S_ISDIR(st.st_mode)) {
      ::unlink(path.c_str());
      return;
    }
    ::chmod(path.c_str(), 0700);
    std::vector<std::string> names;
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name != "." && name != "..") names.push_back(name);
      }
      ::closedir(d);
    }
    for (const auto& n : names) RemoveTree(path + "/" + n);
    ::rmdir(path.c_str());
  }

  std::string path_;
};

}  // namespace certfleet::shared
