// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/**
 * @title IPaymentChannels
 * @notice Unidirectional ERC-20 payment channels paying per inference with cumulative EIP-712 vouchers.
 *
 * A channel's fixed terms (payer, signer, payee, model, salt) are never stored: their hash is the channel id
 * and every call that needs them passes them in calldata, so the contract keeps only the changing state
 * (deposit, claimed, expiry) in one storage slot.
 *
 * Voucher (EIP-712, domain name "ModelMarketplace", version "1"): `Voucher(uint256 channelId,uint256 amount)`,
 * signed by the channel's `signer`. `amount` is cumulative over the channel's life and is a cap: a claim of a
 * voucher for `A` names a `payout` with `claimed < payout <= A <= deposit`, pays `payout - claimed` to the payee and
 * sets `claimed = payout` (the payee takes what was served, not necessarily all the voucher allows; the rest stays
 * the payer's). Channels are never deleted, so `claimed` is a permanent watermark: a voucher can be claimed again,
 * for a higher payout, but never pays beyond its amount, and no claim can lower the watermark.
 *
 * Life cycle: open -> (topUp | extend | claim)* -> expiry -> (topUp | extend | claim)* -> reclaim (final, payer
 * only). Claims stay possible after expiry until the payer reclaims. At any time the payer may instead close the
 * channel cooperatively (final): with the payee's EIP-712 `CloseChannel(uint256 channelId,uint256 payout,uint256
 * deadline)`, the payee gets `payout - claimed` and the payer `deposit - payout` in one transaction.
 */
interface IPaymentChannels {
    /// @notice The fixed terms of a channel; `channelId = uint256(keccak256(abi.encode(terms)))`.
    struct ChannelTerms {
        address payer; // funds the channel, may extend and reclaim it
        address signer; // signs vouchers (may be a hot key distinct from the payer)
        address payee; // receives every claimed amount
        bytes32 modelId; // the ModelRegistry model this channel pays for (informational)
        uint256 salt; // lets one payer open several channels with otherwise equal terms
    }

    /// @notice The changing state of a channel: exactly one storage slot.
    /// @dev `expiry == 0`: no such channel. `expiry == 1` (RECLAIMED): reclaimed, final; `deposit` and `claimed`
    /// keep their last values (so `deposit - claimed` is what was refunded). The escrow's token balance always
    /// equals the sum of `deposit - claimed` over channels that are not reclaimed.
    struct Channel {
        uint96 deposit; // total ever deposited
        uint96 claimed; // cumulative amount paid to the payee (the voucher watermark)
        uint64 expiry; // unix time from which the payer may reclaim (block.timestamp >= expiry)
    }

    /// @notice One voucher of a `claimMany` batch; the payee is given once for the whole batch.
    /// @dev The signature is ERC-2098 compact (`r`, `yParityAndS`): 64 bytes instead of 65 + ABI padding.
    struct Claim {
        address payer;
        address signer;
        bytes32 modelId;
        uint256 salt;
        uint256 amount; // the voucher's cumulative amount (signed)
        uint256 payout; // the new watermark: claimed < payout <= amount
        bytes32 r;
        bytes32 yParityAndS;
    }

    /// @notice A channel was opened with `deposit` tokens; carries every term so channels can be rebuilt from logs.
    event ChannelOpened(
        uint256 indexed channelId,
        address indexed payer,
        address indexed payee,
        address signer,
        bytes32 modelId,
        uint256 salt,
        uint256 deposit,
        uint64 expiry
    );

    /// @notice `added` tokens were deposited into a channel, whose deposit is now `newDeposit`.
    event ChannelToppedUp(uint256 indexed channelId, uint256 added, uint256 newDeposit);

    /// @notice The payer moved a channel's expiry to `newExpiry`.
    event ChannelExtended(uint256 indexed channelId, uint64 newExpiry);

    /// @notice A voucher for cumulative `amount` was claimed for a payout: the channel's watermark is now `claimed`
    /// (at most `amount`), and `claimed` minus the previous watermark went to the channel's payee.
    /// @dev `amount` tells watchers which voucher is now public (a partial claim leaves `amount - claimed` that the
    /// voucher still authorizes: a daemon must not accept it again). What was paid is the difference of two
    /// successive `claimed` (the first from 0); not logging it saves 256 gas a voucher. The payee is a term of the
    /// channel (see `ChannelOpened`); not indexing it again saves 375 gas a voucher.
    event VoucherClaimed(uint256 indexed channelId, uint256 amount, uint256 claimed);

    /// @notice The payer took back the unclaimed `refunded` tokens of an expired channel, which is now closed.
    /// @dev The payer is a term of the channel (see `ChannelOpened`).
    event ChannelReclaimed(uint256 indexed channelId, uint256 refunded);

    /// @notice The payer closed a channel early with the payee's consent (`closeCooperatively`): the watermark is now
    /// `claimed` (its rise went to the payee), `refunded` (`deposit - claimed`) went back to the payer, and the channel
    /// is closed as a reclaimed one (`expiry == RECLAIMED`). One event instead of `VoucherClaimed` + `ChannelReclaimed`
    /// saves about 1,400 gas.
    event ChannelClosed(uint256 indexed channelId, uint256 claimed, uint256 refunded);

    /// @notice A channel's signer is the zero address.
    error PaymentChannelsZeroSigner();
    /// @notice A channel's payee is the zero address.
    error PaymentChannelsZeroPayee();
    /// @notice A deposit or top-up of zero tokens.
    error PaymentChannelsZeroAmount();
    /// @notice `caller` is not the channel's `payer`.
    error PaymentChannelsNotPayer(address caller, address payer);
    /// @notice A channel with these terms exists (or existed): ids are never reused.
    error PaymentChannelsChannelExists(uint256 channelId);
    /// @notice No channel has this id.
    error PaymentChannelsUnknownChannel(uint256 channelId);
    /// @notice The channel was reclaimed: it takes no more deposits, extensions or claims.
    error PaymentChannelsChannelReclaimed(uint256 channelId);
    /// @notice `expiry` is not after the current block time `timestamp`.
    error PaymentChannelsExpiryNotInFuture(uint64 expiry, uint256 timestamp);
    /// @notice `newExpiry` is not later than the channel's `expiry`.
    error PaymentChannelsExpiryNotLater(uint256 channelId, uint64 newExpiry, uint64 expiry);
    /// @notice The channel cannot be reclaimed before `expiry` (block time `timestamp`).
    error PaymentChannelsNotExpired(uint256 channelId, uint64 expiry, uint256 timestamp);
    /// @notice A claim's payout `amount` pays nothing: the channel already claimed `claimed`.
    error PaymentChannelsAmountNotAboveClaimed(uint256 channelId, uint256 amount, uint256 claimed);
    /// @notice A claim's `payout` exceeds the `amount` its voucher was signed for.
    error PaymentChannelsPayoutExceedsVoucher(uint256 channelId, uint256 payout, uint256 amount);
    /// @notice A voucher for `amount` exceeds the channel's `deposit`.
    error PaymentChannelsAmountExceedsDeposit(uint256 channelId, uint256 amount, uint256 deposit);
    /// @notice The voucher signature is malformed, malleable, or not by the channel's `signer`.
    error PaymentChannelsInvalidSignature(uint256 channelId, address signer);
    /// @notice The escrow received `received` tokens where `expected` were sent (fee-on-transfer tokens are refused).
    error PaymentChannelsTransferMismatch(uint256 expected, uint256 received);
    /// @notice The payee's close signature was valid until `deadline`, before block time `timestamp`.
    error PaymentChannelsCloseExpired(uint256 channelId, uint256 deadline, uint256 timestamp);
    /// @notice A `claimMany` call with no claims.
    error PaymentChannelsEmptyBatch();

    /// @notice Opens a channel funded with `amount` tokens pulled from the payer (who must be the caller).
    function open(ChannelTerms calldata terms, uint256 amount, uint64 expiry) external returns (uint256 channelId);

    /// @notice Like `open`, approving the escrow first with an ERC-2612 permit (a front-run permit is tolerated).
    function openWithPermit(
        ChannelTerms calldata terms,
        uint256 amount,
        uint64 expiry,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external returns (uint256 channelId);

    /// @notice Adds `amount` tokens (pulled from the caller, anyone) to an existing, not reclaimed channel.
    function topUp(uint256 channelId, uint256 amount) external;

    /// @notice Moves the channel's expiry later; payer only.
    function extend(ChannelTerms calldata terms, uint64 newExpiry) external;

    /// @notice Pays the payee `payout - claimed` for a voucher of cumulative `amount` and sets `claimed = payout`;
    /// anyone may submit it. Requires `claimed < payout <= amount <= deposit`.
    /// @param amount The voucher's cumulative amount (what the signer allowed at most). `uint120`, wider than a
    /// deposit (`uint96`: a larger amount fails `amount <= deposit`), because these two types make `claim`'s selector
    /// (0x011109ff) the lowest, so the first case of the dispatcher (264 gas less than `uint96, uint96`).
    /// @param payout The channel's new watermark: what the payee earned in total (`amount` for a whole voucher).
    /// @param signature By `terms.signer` over the EIP-712 voucher: 65 bytes `r || s || v` (v = 27 or 28), or the
    /// 64-byte ERC-2098 compact form `r || yParityAndS` (about 330 gas cheaper). High-s signatures are refused.
    function claim(ChannelTerms calldata terms, uint120 amount, uint120 payout, bytes calldata signature) external;

    /// @notice Claims many vouchers (each for its own `payout`, as `claim`) of channels paying one `payee`, with one
    /// token transfer in total. All or nothing: one refused claim reverts the batch.
    /// @return paid The total transferred to `payee`.
    function claimMany(address payee, Claim[] calldata claims) external returns (uint256 paid);

    /// @notice After expiry, refunds `deposit - claimed` to the payer and closes the channel for good; payer only.
    function reclaim(ChannelTerms calldata terms) external;

    /// @notice Closes the channel now, before expiry if need be; payer only (the call is the payer's consent).
    /// Requires `claimed <= payout <= deposit`, `block.timestamp <= deadline` and the payee's EIP-712
    /// `CloseChannel(channelId, payout, deadline)` signature (its consent to be paid `payout` in all), ERC-2098
    /// compact (`r`, `yParityAndS`, low s). Pays the payee `payout - claimed`, refunds `deposit - payout` to the
    /// payer, and emits `ChannelClosed`.
    function closeCooperatively(
        ChannelTerms calldata terms,
        uint256 payout,
        uint256 deadline,
        bytes32 r,
        bytes32 yParityAndS
    ) external;

    /// @notice The escrowed token.
    function token() external view returns (address);

    /// @notice `uint256(keccak256(abi.encode(terms)))`.
    function channelIdOf(ChannelTerms calldata terms) external pure returns (uint256);

    /// @notice The state of a channel (all zero if it does not exist).
    function getChannel(uint256 channelId) external view returns (Channel memory);

    /// @notice The same state as `getChannel`, as a tuple.
    function channels(uint256 channelId) external view returns (uint96 deposit, uint96 claimed, uint64 expiry);

    /// @notice The EIP-712 digest a signer signs for a voucher of cumulative `amount`.
    function voucherDigest(uint256 channelId, uint256 amount) external view returns (bytes32);
}
