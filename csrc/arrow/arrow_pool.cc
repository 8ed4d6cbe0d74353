/* arrow_pool.cc: an arrow::MemoryPool over a tieredmem pool.
 *
 * Allocations of at least the threshold go to the tieredmem pool, the others
 * to the small pool (the pyarrow default it wrapped), as numpy_handler.c does
 * with the C library. Which side owns a pointer is decided by address
 * (tm_pool_of), never by size, so a buffer reallocated across the threshold,
 * or made before a detach, is freed where it lives.
 *
 * Freed pool allocations are kept a while for reuse, as Arrow's own
 * allocators keep theirs: a fresh pool block costs a page fault to zero-fill
 * on first write, a kept one is already in DRAM. Kept blocks are bounded (a
 * share of the DRAM budget, one second idle) and given back when the pool is
 * full, on ReleaseUnused and on detach. */
#include "arrow_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <dlfcn.h>
#include <mutex>
#include <string>
#include <vector>

namespace tieredmem {
namespace {

struct Engine {
    void *(*alloc)(tm_pool *, size_t);
    void (*free)(tm_pool *, void *);
    size_t (*alloc_size)(tm_pool *, const void *);
    tm_pool *(*pool_of)(const void *);
    void (*pin)(tm_pool *);
    void (*unpin)(tm_pool *);
    size_t (*block_size)(tm_pool *);
    const char *(*last_error)(tm_pool *, char *, size_t);
} engine;

class TieredMemoryPool final : public arrow::MemoryPool {
   public:
    TieredMemoryPool(tm_pool *pool, int64_t threshold, size_t keep_limit, arrow::MemoryPool *small)
        : pool_(pool), threshold_(threshold), block_size_((int64_t)engine.block_size(pool)),
          keep_limit_(keep_limit), small_(small)
    {
        engine.pin(pool); /* the handle must stay valid while pool_ may be used */
    }

    arrow::Status Allocate(int64_t size, int64_t alignment, uint8_t **out) override
    {
        ARROW_RETURN_NOT_OK(Check(size, alignment));
        ARROW_RETURN_NOT_OK(Place(size, alignment, out));
        DidGrow(size);
        return arrow::Status::OK();
    }

    arrow::Status Reallocate(int64_t old_size, int64_t new_size, int64_t alignment, uint8_t **ptr) override
    {
        ARROW_RETURN_NOT_OK(Check(new_size, alignment));
        uint8_t *old = *ptr;
        tm_pool *owner = engine.pool_of(old);
        bool large = Large(new_size, alignment);
        if (owner && large && (size_t)new_size <= engine.alloc_size(owner, old)) {
            /* still fits its blocks */
        } else if (!owner && !(large && Attached())) {
            ARROW_RETURN_NOT_OK(small_->Reallocate(old_size, new_size, alignment, ptr));
        } else { /* into the pool, out of it, or growing in it */
            uint8_t *fresh;
            ARROW_RETURN_NOT_OK(Place(new_size, alignment, &fresh));
            memcpy(fresh, old, (size_t)std::min(old_size, new_size));
            Release(owner, old, old_size, alignment);
            *ptr = fresh;
        }
        if (new_size > old_size)
            DidGrow(new_size - old_size);
        else
            bytes_.fetch_sub(old_size - new_size);
        return arrow::Status::OK();
    }

    void Free(uint8_t *buffer, int64_t size, int64_t alignment) override
    {
        Release(engine.pool_of(buffer), buffer, size, alignment);
        bytes_.fetch_sub(size);
    }

    void ReleaseUnused() override
    {
        {
            std::lock_guard<std::mutex> lock(mu_);
            FreeKept(kept_.size());
        }
        small_->ReleaseUnused();
    }

    int64_t bytes_allocated() const override { return bytes_.load(); }
    int64_t max_memory() const override { return max_.load(); }
    int64_t total_bytes_allocated() const override { return total_.load(); }
    int64_t num_allocations() const override { return count_.load(); }
    std::string backend_name() const override { return "tieredmem"; }

    void Detach()
    {
        tm_pool *p;
        {
            std::lock_guard<std::mutex> lock(mu_);
            FreeKept(kept_.size());
            p = pool_;
            pool_ = nullptr;
        }
        if (p)
            engine.unpin(p);
    }

    arrow::MemoryPool *small() const { return small_; }

   private:
    static arrow::Status Check(int64_t size, int64_t alignment)
    {
        if (size < 0)
            return arrow::Status::Invalid("tieredmem: negative allocation size ", size);
        if (alignment <= 0 || (alignment & (alignment - 1)))
            return arrow::Status::Invalid("tieredmem: alignment must be a power of two, got ", alignment);
        return arrow::Status::OK();
    }

    /* Pool blocks are block-aligned: a larger alignment is left to the small
     * pool, which honours any. */
    bool Large(int64_t size, int64_t alignment) const
    {
        return size > 0 && size >= threshold_ && alignment <= block_size_;
    }

    bool Attached()
    {
        std::lock_guard<std::mutex> lock(mu_);
        return pool_ != nullptr;
    }

    arrow::Status Place(int64_t size, int64_t alignment, uint8_t **out)
    {
        if (Large(size, alignment)) {
            std::lock_guard<std::mutex> lock(mu_); /* Detach waits for it */
            if (pool_) {
                ExpireKept();
                if ((*out = TakeKept((size_t)size)))
                    return arrow::Status::OK();
                void *p = engine.alloc(pool_, (size_t)size);
                if (!p && errno == ENOMEM && !kept_.empty()) {
                    FreeKept(kept_.size());
                    p = engine.alloc(pool_, (size_t)size);
                }
                if (p) {
                    *out = (uint8_t *)p;
                    return arrow::Status::OK();
                }
                if (errno == ENOMEM) { /* a full pool is an error, not a fallback */
                    char why[512];
                    return arrow::Status::OutOfMemory("tieredmem pool: ", engine.last_error(pool_, why, sizeof why));
                }
                /* EBADF: closed, not yet detached */
            }
        }
        return small_->Allocate(size, alignment, out);
    }

    void Release(tm_pool *owner, uint8_t *buffer, int64_t size, int64_t alignment)
    {
        if (!owner)
            small_->Free(buffer, size, alignment);
        else if (!Keep(owner, buffer))
            engine.free(owner, buffer);
    }

    /* Keep a freed allocation of our pool for reuse, within the limit. */
    bool Keep(tm_pool *owner, uint8_t *buffer)
    {
        std::lock_guard<std::mutex> lock(mu_);
        size_t bytes = engine.alloc_size(owner, buffer);
        if (owner != pool_ || bytes > keep_limit_)
            return false;
        ExpireKept();
        kept_.push_back({buffer, bytes, Clock::now()});
        kept_bytes_ += bytes;
        size_t n = 0;
        for (size_t over = kept_bytes_ - std::min(kept_bytes_, keep_limit_); over > 0; n++)
            over -= std::min(over, kept_[n].bytes);
        FreeKept(n);
        return true;
    }

    /* The smallest kept allocation that holds size bytes without wasting
     * more than a quarter (and a block) of it, or nullptr. */
    uint8_t *TakeKept(size_t size)
    {
        auto best = kept_.end();
        for (auto k = kept_.begin(); k != kept_.end(); ++k)
            if (k->bytes >= size && k->bytes <= size + size / 4 + (size_t)block_size_ &&
                (best == kept_.end() || k->bytes < best->bytes))
                best = k;
        if (best == kept_.end())
            return nullptr;
        uint8_t *p = best->ptr;
        kept_bytes_ -= best->bytes;
        kept_.erase(best);
        return p;
    }

    /* Give back the n oldest kept allocations. */
    void FreeKept(size_t n)
    {
        for (size_t i = 0; i < n; i++) {
            engine.free(pool_, kept_[i].ptr);
            kept_bytes_ -= kept_[i].bytes;
        }
        kept_.erase(kept_.begin(), kept_.begin() + (std::ptrdiff_t)n);
    }

    void ExpireKept()
    {
        auto cutoff = Clock::now() - kKeepFor;
        size_t n = 0;
        while (n < kept_.size() && kept_[n].since < cutoff)
            n++;
        FreeKept(n);
    }

    void DidGrow(int64_t n)
    {
        int64_t now = bytes_.fetch_add(n) + n;
        total_.fetch_add(n);
        count_.fetch_add(1);
        int64_t peak = max_.load();
        while (peak < now && !max_.compare_exchange_weak(peak, now)) {
        }
    }

    using Clock = std::chrono::steady_clock;
    static constexpr auto kKeepFor = std::chrono::seconds(1);
    struct Kept {
        uint8_t *ptr;
        size_t bytes; /* block-rounded */
        Clock::time_point since;
    };

    std::mutex mu_; /* guards pool_ and kept_ */
    tm_pool *pool_; /* nullptr once detached */
    const int64_t threshold_, block_size_;
    const size_t keep_limit_;
    std::vector<Kept> kept_; /* oldest first */
    size_t kept_bytes_ = 0;
    arrow::MemoryPool *const small_;
    std::atomic<int64_t> bytes_{0}, max_{0}, total_{0}, count_{0};
};

}  // namespace

template <typename F>
static bool bind(void *lib, const char *name, F *&fn)
{
    fn = reinterpret_cast<F *>(dlsym(lib, name));
    return fn != nullptr;
}

const char *bind_engine(const char *path)
{
    /* Already loaded by Python (RTLD_LOCAL): NOLOAD finds that instance. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!lib)
        return "the loaded tieredmem._engine module";
    if (!bind(lib, "tm_alloc", engine.alloc))
        return "tm_alloc";
    if (!bind(lib, "tm_free", engine.free))
        return "tm_free";
    if (!bind(lib, "tm_alloc_size", engine.alloc_size))
        return "tm_alloc_size";
    if (!bind(lib, "tm_pool_of", engine.pool_of))
        return "tm_pool_of";
    if (!bind(lib, "tm_pool_pin", engine.pin))
        return "tm_pool_pin";
    if (!bind(lib, "tm_pool_unpin", engine.unpin))
        return "tm_pool_unpin";
    if (!bind(lib, "tm_block_size", engine.block_size))
        return "tm_block_size";
    if (!bind(lib, "tm_last_error", engine.last_error))
        return "tm_last_error";
    return nullptr; /* the handle is kept: the engine module is never unloaded */
}

arrow::MemoryPool *new_arrow_pool(tm_pool *pool, int64_t threshold, size_t keep_limit, arrow::MemoryPool *small)
{
    return new TieredMemoryPool(pool, threshold, keep_limit, small);
}

void detach_arrow_pool(arrow::MemoryPool *pool) { static_cast<TieredMemoryPool *>(pool)->Detach(); }

arrow::MemoryPool *small_pool_of(arrow::MemoryPool *pool)
{
    auto *ours = dynamic_cast<TieredMemoryPool *>(pool);
    return ours ? ours->small() : pool;
}

}  // namespace tieredmem
