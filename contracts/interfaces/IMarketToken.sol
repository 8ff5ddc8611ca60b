// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/**
 * @title IMarketToken
 * @notice The marketplace's demo ERC-20: ERC-2612 permit plus ERC-3009 transfers with authorization, so that
 * standard x402 `exact` payments work on a local chain. EIP-712 domain: name "Market Token", version "1".
 *
 * ERC-3009 type strings (exactly as in the EIP):
 * - `TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,
 *   bytes32 nonce)`
 * - `ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,
 *   bytes32 nonce)`
 * - `CancelAuthorization(address authorizer,bytes32 nonce)`
 *
 * An authorization is valid strictly after `validAfter` and strictly before `validBefore`. Nonces are random
 * 32-byte values, each usable (or cancelable) once per authorizer. Signatures are checked with OpenZeppelin's
 * SignatureChecker: ECDSA for accounts without code (malleable `s` and the zero signer refused), ERC-1271 for
 * contract wallets.
 */
interface IMarketToken {
    /// @notice `authorizer` used the authorization `nonce` (transfer or receive).
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    /// @notice `authorizer` canceled the unused authorization `nonce`.
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    /// @notice The authorization is not valid before `validAfter` (block time `timestamp`).
    error MarketTokenAuthorizationNotYetValid(uint256 validAfter, uint256 timestamp);
    /// @notice The authorization expired at `validBefore` (block time `timestamp`).
    error MarketTokenAuthorizationExpired(uint256 validBefore, uint256 timestamp);
    /// @notice `nonce` of `authorizer` was already used or canceled.
    error MarketTokenAuthorizationUsed(address authorizer, bytes32 nonce);
    /// @notice The signature is not a valid signature of `authorizer` over the authorization.
    error MarketTokenInvalidSignature(address authorizer);
    /// @notice `receiveWithAuthorization` was called by `caller`, not by the payee `to`.
    error MarketTokenCallerNotPayee(address caller, address to);

    /// @notice Mints `amount` tokens to `to`; owner only.
    function mint(address to, uint256 amount) external;

    /// @notice ERC-3009: executes a transfer signed by `from` (65-byte signature given as v, r, s).
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;

    /// @notice ERC-3009: executes a transfer signed by `from` (signature as bytes: 65-byte ECDSA or ERC-1271).
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external;

    /// @notice ERC-3009: like `transferWithAuthorization`, but only the payee `to` may submit it (no front-running).
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;

    /// @notice ERC-3009: `receiveWithAuthorization` with the signature as bytes.
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external;

    /// @notice ERC-3009: cancels an unused authorization, signed by its `authorizer`.
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;

    /// @notice ERC-3009: `cancelAuthorization` with the signature as bytes.
    function cancelAuthorization(address authorizer, bytes32 nonce, bytes calldata signature) external;

    /// @notice Whether `nonce` of `authorizer` was used or canceled.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);

    /// @notice The EIP-712 domain version, "1" (as USDC exposes it; x402 clients read it).
    function version() external view returns (string memory);
}
