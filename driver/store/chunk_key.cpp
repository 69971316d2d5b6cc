// Chunk keys: SHA-256 from OpenSSL's libcrypto (Debian 12: libssl-dev), a cryptographic hash,
// so that no prompt can be crafted to land on another chunk's file name. The payload checksums
// use the much faster, non-cryptographic XXH3 (chunk_file_format.cpp).
#include "store/chunk_store.h"

#include <openssl/evp.h>

#include <bit>
#include <memory>
#include <stdexcept>

namespace kvfuse::store {
namespace {

static_assert(std::endian::native == std::endian::little, "token ids are hashed little-endian");

// Framing (docs/STORE.md): tag ‖ u64 fingerprint length ‖ fingerprint ‖ u64 token count ‖
// tokens as int32 little-endian. Lengths first, so no two inputs frame to the same bytes.
constexpr char kDomainTag[] = "kvfuse.chunk-key.v1";

ChunkDigest sha256_of_key(std::string_view model_fingerprint, std::span<const int32_t> tokens) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(),
                                                                    &EVP_MD_CTX_free);
    const uint64_t fingerprint_bytes = model_fingerprint.size();
    const uint64_t token_count = tokens.size();
    ChunkDigest digest{};
    unsigned int digest_bytes = 0;
    // Only allocation failure can make these fail; a key cannot be made without its hash.
    if (!context || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1 ||
        EVP_DigestUpdate(context.get(), kDomainTag, sizeof(kDomainTag) - 1) != 1 ||
        EVP_DigestUpdate(context.get(), &fingerprint_bytes, 8) != 1 ||
        EVP_DigestUpdate(context.get(), model_fingerprint.data(), model_fingerprint.size()) != 1 ||
        EVP_DigestUpdate(context.get(), &token_count, 8) != 1 ||
        EVP_DigestUpdate(context.get(), tokens.data(), tokens.size_bytes()) != 1 ||
        EVP_DigestFinal_ex(context.get(), digest.data(), &digest_bytes) != 1 ||
        digest_bytes != digest.size()) {
        throw std::runtime_error("kvfuse store: SHA-256 (OpenSSL EVP) failed");
    }
    return digest;
}

}  // namespace

std::string ChunkKey::hex() const {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string text(2 * digest.size(), '0');
    for (size_t i = 0; i < digest.size(); ++i) {
        text[2 * i] = kDigits[digest[i] >> 4];
        text[2 * i + 1] = kDigits[digest[i] & 15];
    }
    return text;
}

std::optional<ChunkDigest> parse_digest_hex(std::string_view hex) {
    if (hex.size() != 2 * kChunkDigestBytes) return std::nullopt;
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    ChunkDigest digest{};
    for (size_t i = 0; i < digest.size(); ++i) {
        const int high = nibble(hex[2 * i]), low = nibble(hex[2 * i + 1]);
        if (high < 0 || low < 0) return std::nullopt;
        digest[i] = static_cast<uint8_t>(high << 4 | low);
    }
    return digest;
}

ChunkKey make_chunk_key(std::string_view model_fingerprint, std::span<const int32_t> tokens) {
    return make_chunk_key_with_digest_for_testing(model_fingerprint, tokens,
                                                  sha256_of_key(model_fingerprint, tokens));
}

ChunkKey make_chunk_key_with_digest_for_testing(std::string_view model_fingerprint,
                                                std::span<const int32_t> tokens,
                                                const ChunkDigest& digest) {
    ChunkKey key;
    key.digest = digest;
    key.model_fingerprint = std::string(model_fingerprint);
    key.tokens.assign(tokens.begin(), tokens.end());
    return key;
}

}  // namespace kvfuse::store
