#include "shared/sqlite/sqlite.h"

#include <utility>

namespace certfleet::shared {

Status SqliteStatus(sqlite3* db, int rc, std::string_view what) {
  Code code = Code::kInternal;
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT: code = Code::kAlreadyExists; break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: code = Code::kUnavailable; break;
    case SQLITE_FULL: code = Code::kResourceExhausted; break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: code = Code::kDataLoss; break;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_CANTOPEN: code = Code::kPermissionDenied; break;
    default: break;
  }
  std::string msg(what);
  msg += ": ";
  msg += db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return Status(code, std::move(msg));
}

Statement& Statement::Bind(int index, std::string_view text) {
  int rc = sqlite3_bind_text(stmt_.get(), index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
  if (rc != SQLITE_OK && bind_error_.ok()) bind_error_ = SqliteStatus(sqlite3_db_handle(stmt_.get()), rc, "bind");
  return *this;
}
Statement& Statement::Bind(int index, int64_t value) {
  int rc = sqlite3_bind_int64(stmt_.get(), index, value);
  if (rc != SQLITE_OK && bind_error_.ok()) bind_error_ = SqliteStatus(sqlite3_db_handle(stmt_.get()), rc, "bind");
  return *this;
}
Statement& Statement::BindNull(int index) {
  sqlite3_bind_null(stmt_.get(), index);
  return *this;
}
Statement& Statement::BindOptional(int index, const std::optional<std::string>& text) {
  return text ? Bind(index, std::string_view(*text)) : BindNull(index);
}

Result<bool> Statement::Step() {
  if (!bind_error_.ok()) return Error(bind_error_);
  int rc = sqlite3_step(stmt_.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return Error(SqliteStatus(sqlite3_db_handle(stmt_.get()), rc, "step"));
}

Status Statement::Run() {
  for (;;) {
    auto r = Step();
    if (!r) return r.error();
    if (!*r) return Status::Ok();
  }
}

Status Statement::Reset() {
  sqlite3_reset(stmt_.get());
  sqlite3_clear_bindings(stmt_.get());
  bind_error_ = Status::Ok();
  return Status::Ok();
}

int64_t Statement::Int(int col) const { return sqlite3_column_int64(stmt_.get(), col); }
std::string Statement::Text(int col) const {
  const unsigned char* p = sqlite3_column_text(stmt_.get(), col);
  if (p == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_.get(), col)));
}
bool Statement::IsNull(int col) const { return sqlite3_column_type(stmt_.get(), col) == SQLITE_NULL; }

Result<Database> Database::Open(const std::string& path, const Options& options) {
  sqlite3* raw = nullptr;
  int flags = SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW;
  flags |= options.read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  Database db;
  db.db_.reset(raw);
  if (rc != SQLITE_OK) return Error(SqliteStatus(raw, rc, "open " + path));
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, options.busy_timeout_ms);
  if (!options.read_only) {
    CF_RETURN_IF_ERROR(db.Exec("PRAGMA journal_mode=WAL"));
  }
  CF_RETURN_IF_ERROR(db.Exec(options.durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"));
  CF_RETURN_IF_ERROR(db.Exec("PRAGMA foreign_keys=ON"));
  return db;
}

Status Database::Exec(std::string_view sql) {
  std::string s(sql);
  char* err = nullptr;
  int rc = sqlite3_exec(db_.get(), s.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err != nullptr ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    Status st = SqliteStatus(db_.get(), rc, "exec");
    return Status(st.code(), "exec: " + msg);
  }
  return Status::Ok();
}

Result<Statement> Database::Prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db_.get(), sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) return Error(SqliteStatus(db_.get(), rc, "prepare"));
  return Statement(stmt);
}

int64_t Database::LastInsertId() const { return sqlite3_last_insert_rowid(db_.get()); }
int Database::Changes() const { return sqlite3_changes(db_.get()); }

Result<int> Database::SchemaVersion() {
  CF_ASSIGN_OR_RETURN(Statement st, Prepare("PRAGMA user_version"));
  CF_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return Error(Code::kInternal, "no user_version");
  return static_cast<int>(st.Int(0));
}

Status Database::Migrate(const std::vector<std::string_view>& migrations) {
  auto version = SchemaVersion();
  if (!version) return version.error();
  if (*version > static_cast<int>(migrations.size())) {
    return Status(Code::kFailedPrecondition, "database schema version " + std::to_string(*version) +
                                                 " is newer than this program (" +
                                                 std::to_string(migrations.size()) + ")");
  }
  for (size_t v = static_cast<size_t>(*version); v < migrations.size(); ++v) {
    auto tx = Transaction::Begin(*this);
    if (!tx) return tx.error();
    Status st = Exec(migrations[v]);
    if (!st.ok()) return st.WithContext("migration " + std::to_string(v + 1));
    st = Exec("PRAGMA user_version=" + std::to_string(v + 1));
    if (!st.ok()) return st;
    st = tx->Commit();
    if (!st.ok()) return st;
  }
  return Status::Ok();
}

Result<Transaction> Transaction::Begin(Database& db) {
  CF_RETURN_IF_ERROR(db.Exec("BEGIN IMMEDIATE"));
  return Transaction(&db);
}

Transaction::~Transaction() {
  if (db_ != nullptr) (void)db_->Exec("ROLLBACK");
}

Status Transaction::Commit() {
  Status st = db_->Exec("COMMIT");
  if (st.ok()) db_ = nullptr;
  return st;
}

}  // namespace certfleet::shared
