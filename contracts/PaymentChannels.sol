// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IPaymentChannels} from "./interfaces/IPaymentChannels.sol";

/**
 * @title PaymentChannels
 * @notice Escrow of one ERC-20 for pay-per-inference channels settled with cumulative EIP-712 vouchers.
 * @dev See {IPaymentChannels}. Storage is one slot per channel, keyed by the hash of its terms; terms travel in
 * calldata. Every entry point that moves tokens updates state and emits its event before its one transfer
 * (checks-effects-interactions). Deposits (`open`, `openWithPermit`, `topUp`) are also `nonReentrant`, because they
 * read the escrow's balance after the transfer to refuse fee-on-transfer tokens. Payouts (`claim`, `claimMany`,
 * `reclaim`, `closeCooperatively`) are not: the transfer is their last step and reads nothing back, so a token that calls back in finds
 * the watermark raised or the channel closed (see docs/contracts.md, "Tokens and re-entry"). Tokens without a
 * return value work: deposits go through SafeERC20, payouts through `_pay`, which applies its rules. Inline assembly
 * only hashes (from calldata, or past the free memory pointer), calls the ecrecover precompile and makes the payout
 * transfer (`_pay`, to save ~155 gas a payout); deposits' transfers and the guard are OpenZeppelin's.
 */
contract PaymentChannels is IPaymentChannels, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    /// @notice EIP-712 type hash of `Voucher(uint256 channelId,uint256 amount)`.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(uint256 channelId,uint256 amount)");

    /// @notice EIP-712 type hash of `CloseChannel(uint256 channelId,uint256 payout,uint256 deadline)`.
    bytes32 public constant CLOSE_CHANNEL_TYPEHASH =
        keccak256("CloseChannel(uint256 channelId,uint256 payout,uint256 deadline)");

    /// @notice The `expiry` value marking a reclaimed channel (no real expiry is ever this small).
    uint64 public constant RECLAIMED = 1;

    /// @dev A channel's state as stored: see `_channels`. A struct so that code can hold a storage pointer to it
    /// (the slot is hashed once per call).
    struct PackedChannel {
        uint256 word;
    }

    /// @dev secp256k1's group order n, halved: a larger s is the malleable twin of a valid signature.
    uint256 private constant _HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    IERC20 private immutable _token;

    /// @dev One word per channel, laid out as `Channel` would be: deposit in bits 0-95, claimed in bits 96-191,
    /// expiry in bits 192-255. Packed by hand so that every update is exactly one SLOAD and one SSTORE.
    mapping(uint256 channelId => PackedChannel) private _channels;

    /// @param token_ The only token this escrow holds.
    constructor(IERC20 token_) EIP712("ModelMarketplace", "1") {
        _token = token_;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Funding

    /// @inheritdoc IPaymentChannels
    function open(
        ChannelTerms calldata terms,
        uint256 amount,
        uint64 expiry
    ) external nonReentrant returns (uint256 channelId) {
        channelId = _open(terms, amount, expiry);
    }

    /// @inheritdoc IPaymentChannels
    function openWithPermit(
        ChannelTerms calldata terms,
        uint256 amount,
        uint64 expiry,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (uint256 channelId) {
        // Anyone who sees the permit in the mempool can submit it first, making ours revert while the allowance
        // is already in place: ignore the failure and let the transfer below decide.
        try IERC20Permit(address(_token)).permit(terms.payer, address(this), amount, permitDeadline, v, r, s) {}
        catch {} // solhint-disable-line no-empty-blocks
        channelId = _open(terms, amount, expiry);
    }

    /// @inheritdoc IPaymentChannels
    function topUp(uint256 channelId, uint256 amount) external nonReentrant {
        if (amount == 0) revert PaymentChannelsZeroAmount();
        PackedChannel storage channel = _channels[channelId];
        (uint96 deposit, uint96 claimed, uint64 expiry) = _load(channel);
        _requireOpen(channelId, expiry);
        uint96 newDeposit = (deposit + amount).toUint96();
        _store(channel, newDeposit, claimed, expiry);
        emit ChannelToppedUp(channelId, amount, newDeposit);
        _pull(amount);
    }

    /// @inheritdoc IPaymentChannels
    function extend(ChannelTerms calldata terms, uint64 newExpiry) external {
        _requirePayer(terms.payer);
        uint256 channelId = _channelId(terms);
        PackedChannel storage channel = _channels[channelId];
        (uint96 deposit, uint96 claimed, uint64 expiry) = _load(channel);
        _requireOpen(channelId, expiry);
        if (newExpiry <= expiry) revert PaymentChannelsExpiryNotLater(channelId, newExpiry, expiry);
        _store(channel, deposit, claimed, newExpiry);
        emit ChannelExtended(channelId, newExpiry);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Settlement

    /// @inheritdoc IPaymentChannels
    function claim(ChannelTerms calldata terms, uint120 amount, uint120 payout, bytes calldata signature) external {
        uint256 channelId = _channelId(terms);
        (bool wellFormed, bytes32 r, bytes32 vs) = _compact(signature);
        if (!wellFormed) revert PaymentChannelsInvalidSignature(channelId, terms.signer);
        uint256 paid = _settle(_domainSeparatorV4(), channelId, amount, payout, terms.signer, r, vs);
        _pay(terms.payee, paid);
    }

    /// @inheritdoc IPaymentChannels
    function claimMany(address payee, Claim[] calldata claims) external returns (uint256 paid) {
        uint256 count = claims.length;
        if (count == 0) revert PaymentChannelsEmptyBatch();
        bytes32 domainSeparator = _domainSeparatorV4();
        for (uint256 i = 0; i < count; ++i) {
            Claim calldata item = claims[i];
            uint256 channelId = uint256(keccak256(abi.encode(item.payer, item.signer, payee, item.modelId, item.salt)));
            uint256 channelPaid = _settle(
                domainSeparator,
                channelId,
                item.amount,
                item.payout,
                item.signer,
                item.r,
                item.yParityAndS
            );
            // Each term is below 2^96 (at most a deposit) and a calldata array has far fewer than 2^160 items.
            unchecked {
                paid += channelPaid;
            }
        }
        _pay(payee, paid);
    }

    /// @inheritdoc IPaymentChannels
    function reclaim(ChannelTerms calldata terms) external {
        _requirePayer(terms.payer);
        uint256 channelId = _channelId(terms);
        PackedChannel storage channel = _channels[channelId];
        uint256 word = channel.word;
        (uint96 deposit, uint96 claimed, uint64 expiry) = _unpack(word);
        _requireOpen(channelId, expiry);
        if (block.timestamp < expiry) revert PaymentChannelsNotExpired(channelId, expiry, block.timestamp);
        channel.word = _asReclaimed(word);
        uint256 refunded;
        // claimed <= deposit always holds: every claim checks payout <= amount <= deposit, and deposits only grow.
        unchecked {
            refunded = deposit - claimed;
        }
        emit ChannelReclaimed(channelId, refunded);
        if (refunded != 0) _pay(msg.sender, refunded); // the caller is the payer (checked above)
    }

    /// @inheritdoc IPaymentChannels
    function closeCooperatively(
        ChannelTerms calldata terms,
        uint256 payout,
        uint256 deadline,
        bytes32 r,
        bytes32 yParityAndS
    ) external {
        _requirePayer(terms.payer);
        uint256 channelId = _channelId(terms);
        if (block.timestamp > deadline) revert PaymentChannelsCloseExpired(channelId, deadline, block.timestamp);
        PackedChannel storage channel = _channels[channelId];
        (uint96 deposit, uint96 claimed, uint64 expiry) = _load(channel);
        _requireOpen(channelId, expiry);
        if (payout < claimed) revert PaymentChannelsAmountNotAboveClaimed(channelId, payout, claimed);
        if (payout > deposit) revert PaymentChannelsAmountExceedsDeposit(channelId, payout, deposit);
        address payee = terms.payee;
        if (!_signedBy(_closeDigest(_domainSeparatorV4(), channelId, payout, deadline), r, yParityAndS, payee)) {
            revert PaymentChannelsInvalidSignature(channelId, payee);
        }
        // payout <= deposit, a uint96, was checked above, so the cast keeps every bit.
        _store(channel, deposit, uint96(payout), RECLAIMED);
        uint256 paid;
        uint256 refunded;
        // claimed <= payout <= deposit was checked above.
        unchecked {
            paid = payout - claimed;
            refunded = deposit - payout;
        }
        emit ChannelClosed(channelId, payout, refunded);
        if (paid != 0) _pay(payee, paid);
        if (refunded != 0) _pay(msg.sender, refunded); // the caller is the payer (checked above)
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Views

    /// @inheritdoc IPaymentChannels
    function token() external view returns (address) {
        return address(_token);
    }

    /// @inheritdoc IPaymentChannels
    function channelIdOf(ChannelTerms calldata terms) external pure returns (uint256) {
        return _channelId(terms);
    }

    /// @inheritdoc IPaymentChannels
    function getChannel(uint256 channelId) external view returns (Channel memory) {
        (uint96 deposit, uint96 claimed, uint64 expiry) = _load(_channels[channelId]);
        return Channel({deposit: deposit, claimed: claimed, expiry: expiry});
    }

    /// @inheritdoc IPaymentChannels
    function channels(uint256 channelId) external view returns (uint96 deposit, uint96 claimed, uint64 expiry) {
        return _load(_channels[channelId]);
    }

    /// @inheritdoc IPaymentChannels
    function voucherDigest(uint256 channelId, uint256 amount) external view returns (bytes32) {
        return _voucherDigest(_domainSeparatorV4(), channelId, amount);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Internals

    function _open(ChannelTerms calldata terms, uint256 amount, uint64 expiry) private returns (uint256 channelId) {
        _requirePayer(terms.payer);
        if (terms.signer == address(0)) revert PaymentChannelsZeroSigner();
        if (terms.payee == address(0)) revert PaymentChannelsZeroPayee();
        if (amount == 0) revert PaymentChannelsZeroAmount();
        if (expiry <= block.timestamp) revert PaymentChannelsExpiryNotInFuture(expiry, block.timestamp);
        channelId = _channelId(terms);
        PackedChannel storage channel = _channels[channelId];
        if (channel.word != 0) revert PaymentChannelsChannelExists(channelId);
        _store(channel, amount.toUint96(), 0, expiry);
        emit ChannelOpened(
            channelId,
            terms.payer,
            terms.payee,
            terms.signer,
            terms.modelId,
            terms.salt,
            amount,
            expiry
        );
        _pull(amount);
    }

    /// @dev Checks a voucher of cumulative `amount` against the channel, raises the watermark to `payout` (at most
    /// `amount`), emits its event and returns what it pays. The signature is ERC-2098 compact (`r`, `vs`).
    function _settle(
        bytes32 domainSeparator,
        uint256 channelId,
        uint256 amount,
        uint256 payout,
        address signer,
        bytes32 r,
        bytes32 vs
    ) private returns (uint256 paid) {
        PackedChannel storage channel = _channels[channelId];
        uint256 word = channel.word;
        (uint96 deposit, uint96 claimed, uint64 expiry) = _unpack(word);
        _requireOpen(channelId, expiry);
        if (payout <= claimed) revert PaymentChannelsAmountNotAboveClaimed(channelId, payout, claimed);
        if (payout > amount) revert PaymentChannelsPayoutExceedsVoucher(channelId, payout, amount);
        if (amount > deposit) revert PaymentChannelsAmountExceedsDeposit(channelId, amount, deposit);
        if (!_signedBy(_voucherDigest(domainSeparator, channelId, amount), r, vs, signer)) {
            revert PaymentChannelsInvalidSignature(channelId, signer);
        }
        // payout > claimed was checked above.
        unchecked {
            paid = payout - claimed;
        }
        // payout <= amount <= deposit, a uint96, was checked above, so the field keeps every bit.
        channel.word = _withClaimed(word, payout);
        emit VoucherClaimed(channelId, amount, payout);
    }

    /// @dev `signature` as ERC-2098 (`r`, `yParityAndS`): 64 bytes are taken as they are, 65 bytes `r || s || v` must be
    /// canonical (v 27 or 28, s below 2^255; `_settle` also refuses s > n/2). False for any other length.
    function _compact(bytes calldata signature) private pure returns (bool wellFormed, bytes32 r, bytes32 vs) {
        uint256 length = signature.length;
        uint256 s;
        // Read the two words without copying, before looking at the length (64 first, the common case, saves ~40 gas):
        // what a shorter signature reads past its end is never used, as every length but 64 or 65 is refused below.
        assembly ("memory-safe") {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 0x20))
        }
        if (length == 64) return (true, r, bytes32(s));
        if (length != 65) return (false, 0, 0);
        uint256 v = uint8(signature[64]);
        if ((v != 27 && v != 28) || s >> 255 != 0) return (false, 0, 0);
        return (true, r, bytes32(((v - 27) << 255) | s));
    }

    /// @dev Pulls `amount` tokens from the caller and refuses tokens that deliver less (fee on transfer).
    function _pull(uint256 amount) private {
        uint256 balanceBefore = _token.balanceOf(address(this));
        _token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = _token.balanceOf(address(this)) - balanceBefore;
        if (received != amount) revert PaymentChannelsTransferMismatch(amount, received);
    }

    /// @dev Sends `amount` tokens to `to` with SafeERC20's `safeTransfer` rules: a reverting call reverts with its data;
    /// otherwise the call must return nothing from a token with code, or a first word of exactly 1. Assembly here,
    /// against our usual rule (transfers are OpenZeppelin's), because `safeTransfer` builds its call with
    /// `abi.encodeCall` into newly allocated memory: this writes it past the free memory pointer, ~155 gas less per
    /// payout. Deposits keep `safeTransferFrom`.
    function _pay(address to, uint256 amount) private {
        IERC20 token_ = _token;
        bytes4 selector = IERC20.transfer.selector;
        bool accepted;
        assembly ("memory-safe") {
            let free := mload(0x40)
            mstore(free, selector)
            mstore(add(free, 0x04), and(to, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(free, 0x24), amount)
            // The first word of the return data, if any, lands in scratch space.
            if iszero(call(gas(), token_, 0, free, 0x44, 0x00, 0x20)) {
                returndatacopy(free, 0x00, returndatasize())
                revert(free, returndatasize())
            }
            switch returndatasize()
            case 0 {
                accepted := gt(extcodesize(token_), 0)
            }
            default {
                accepted := eq(mload(0x00), 1)
            }
        }
        if (!accepted) revert SafeERC20.SafeERC20FailedOperation(address(token_));
    }

    function _load(
        PackedChannel storage channel
    ) private view returns (uint96 deposit, uint96 claimed, uint64 expiry) {
        return _unpack(channel.word);
    }

    function _unpack(uint256 word) private pure returns (uint96 deposit, uint96 claimed, uint64 expiry) {
        // Unpacking: each truncation keeps exactly its field's bits.
        deposit = uint96(word);
        claimed = uint96(word >> 96);
        expiry = uint64(word >> 192);
    }

    function _store(PackedChannel storage channel, uint96 deposit, uint96 claimed, uint64 expiry) private {
        channel.word = uint256(deposit) | (uint256(claimed) << 96) | (uint256(expiry) << 192);
    }

    /// @dev `word` with `claimed` (below 2^96) as its watermark and the other fields kept: one mask, where repacking all
    /// three fields (`_store`) costs ~50 gas more.
    function _withClaimed(uint256 word, uint256 claimed) private pure returns (uint256) {
        return (word & ~(uint256(type(uint96).max) << 96)) | (claimed << 96);
    }

    /// @dev `word` with its expiry set to RECLAIMED, deposit and claimed kept.
    function _asReclaimed(uint256 word) private pure returns (uint256) {
        return (word & type(uint192).max) | (uint256(RECLAIMED) << 192);
    }

    function _requirePayer(address payer) private view {
        if (msg.sender != payer) revert PaymentChannelsNotPayer(msg.sender, payer);
    }

    function _requireOpen(uint256 channelId, uint64 expiry) private pure {
        // One comparison on the way through: 0 and RECLAIMED are the only expiries below 2.
        if (expiry <= RECLAIMED) {
            if (expiry == 0) revert PaymentChannelsUnknownChannel(channelId);
            revert PaymentChannelsChannelReclaimed(channelId);
        }
    }

    /// @dev `uint256(keccak256(abi.encode(terms)))`, hashed straight from calldata (the five words of `terms` are
    /// its ABI encoding; a word with dirty high bits hashes to an id no channel has).
    function _channelId(ChannelTerms calldata terms) private pure returns (uint256 channelId) {
        assembly ("memory-safe") {
            let free := mload(0x40)
            calldatacopy(free, terms, 0xa0)
            channelId := keccak256(free, 0xa0)
        }
    }

    /// @dev The EIP-712 digest of `Voucher(channelId, amount)` (as `_hashTypedDataV4`), hashed past the free memory
    /// pointer without allocating.
    function _voucherDigest(
        bytes32 domainSeparator,
        uint256 channelId,
        uint256 amount
    ) private pure returns (bytes32 digest) {
        bytes32 typeHash = VOUCHER_TYPEHASH;
        assembly ("memory-safe") {
            let free := mload(0x40)
            mstore(free, typeHash)
            mstore(add(free, 0x20), channelId)
            mstore(add(free, 0x40), amount)
            let structHash := keccak256(free, 0x60)
            mstore(free, hex"1901")
            mstore(add(free, 0x02), domainSeparator)
            mstore(add(free, 0x22), structHash)
            digest := keccak256(free, 0x42)
        }
    }

    /// @dev The EIP-712 digest of `CloseChannel(channelId, payout, deadline)`, hashed as `_voucherDigest` is.
    function _closeDigest(
        bytes32 domainSeparator,
        uint256 channelId,
        uint256 payout,
        uint256 deadline
    ) private pure returns (bytes32 digest) {
        bytes32 typeHash = CLOSE_CHANNEL_TYPEHASH;
        assembly ("memory-safe") {
            let free := mload(0x40)
            mstore(free, typeHash)
            mstore(add(free, 0x20), channelId)
            mstore(add(free, 0x40), payout)
            mstore(add(free, 0x60), deadline)
            let structHash := keccak256(free, 0x80)
            mstore(free, hex"1901")
            mstore(add(free, 0x02), domainSeparator)
            mstore(add(free, 0x22), structHash)
            digest := keccak256(free, 0x42)
        }
    }

    /// @dev Whether the ERC-2098 signature (`r`, `vs`) of `digest` is by `signer`. Applies `ECDSA.tryRecover`'s rules:
    /// s above n/2 (malleable) is refused, the precompile's empty result means invalid, and the zero address signs
    /// nothing.
    function _signedBy(bytes32 digest, bytes32 r, bytes32 vs, address signer) private view returns (bool valid) {
        uint256 s = uint256(vs) & (type(uint256).max >> 1);
        if (s > _HALF_ORDER) return false;
        // yParity is the top bit of vs, so v is 27 or 28.
        uint256 v = (uint256(vs) >> 255) + 27;
        // The ecrecover precompile, its input past the free memory pointer and its output in scratch space.
        assembly ("memory-safe") {
            let free := mload(0x40)
            mstore(free, digest)
            mstore(add(free, 0x20), v)
            mstore(add(free, 0x40), r)
            mstore(add(free, 0x60), s)
            // An invalid signature returns no data (and leaves 0x00 as it was): only a 32-byte result is a signer.
            // Without branches, as all three hold on the way through.
            pop(staticcall(gas(), 0x01, free, 0x80, 0x00, 0x20))
            valid := and(and(eq(returndatasize(), 0x20), eq(mload(0x00), signer)), iszero(iszero(signer)))
        }
    }
}
