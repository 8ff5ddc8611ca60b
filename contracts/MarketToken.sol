// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {IMarketToken} from "./interfaces/IMarketToken.sol";

/**
 * @title MarketToken
 * @notice Demo ERC-20 "Market Token" (MKT, 18 decimals) with ERC-2612 permit and ERC-3009 authorizations.
 * @dev See {IMarketToken}. Authorization nonces are marked used (and their event emitted) before the balance moves.
 */
contract MarketToken is IMarketToken, ERC20, ERC20Permit, Ownable {
    /// @notice EIP-3009 type hash of a transfer authorization anyone may submit.
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH =
        keccak256(
            "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,"
            "bytes32 nonce)"
        );
    /// @notice EIP-3009 type hash of a transfer authorization only the payee may submit.
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH =
        keccak256(
            "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,"
            "bytes32 nonce)"
        );
    /// @notice EIP-3009 type hash of a cancellation.
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");

    /// @dev The signed fields of a transfer or receive authorization.
    struct Authorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    mapping(address authorizer => mapping(bytes32 nonce => bool used)) private _authorizations;

    /// @param initialOwner The only account allowed to mint.
    constructor(address initialOwner)
        ERC20("Market Token", "MKT")
        ERC20Permit("Market Token")
        Ownable(initialOwner)
    {}

    /// @inheritdoc IMarketToken
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @inheritdoc IMarketToken
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
    ) external {
        _transferWithAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
            Authorization(from, to, value, validAfter, validBefore, nonce),
            abi.encodePacked(r, s, v)
        );
    }

    /// @inheritdoc IMarketToken
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        _transferWithAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
            Authorization(from, to, value, validAfter, validBefore, nonce),
            signature
        );
    }

    /// @inheritdoc IMarketToken
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
    ) external {
        if (msg.sender != to) revert MarketTokenCallerNotPayee(msg.sender, to);
        _transferWithAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
            Authorization(from, to, value, validAfter, validBefore, nonce),
            abi.encodePacked(r, s, v)
        );
    }

    /// @inheritdoc IMarketToken
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        if (msg.sender != to) revert MarketTokenCallerNotPayee(msg.sender, to);
        _transferWithAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
            Authorization(from, to, value, validAfter, validBefore, nonce),
            signature
        );
    }

    /// @inheritdoc IMarketToken
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external {
        _cancelAuthorization(authorizer, nonce, abi.encodePacked(r, s, v));
    }

    /// @inheritdoc IMarketToken
    function cancelAuthorization(address authorizer, bytes32 nonce, bytes calldata signature) external {
        _cancelAuthorization(authorizer, nonce, signature);
    }

    /// @inheritdoc IMarketToken
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizations[authorizer][nonce];
    }

    /// @inheritdoc IMarketToken
    function version() external view returns (string memory) {
        return _EIP712Version();
    }

    function _transferWithAuthorization(
        bytes32 typeHash,
        Authorization memory auth,
        bytes memory signature
    ) private {
        if (block.timestamp <= auth.validAfter) {
            revert MarketTokenAuthorizationNotYetValid(auth.validAfter, block.timestamp);
        }
        if (block.timestamp >= auth.validBefore) {
            revert MarketTokenAuthorizationExpired(auth.validBefore, block.timestamp);
        }
        bytes32 structHash = keccak256(
            abi.encode(typeHash, auth.from, auth.to, auth.value, auth.validAfter, auth.validBefore, auth.nonce)
        );
        _useAuthorization(auth.from, auth.nonce, structHash, signature);
        emit AuthorizationUsed(auth.from, auth.nonce);
        _transfer(auth.from, auth.to, auth.value);
    }

    function _cancelAuthorization(address authorizer, bytes32 nonce, bytes memory signature) private {
        bytes32 structHash = keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce));
        _useAuthorization(authorizer, nonce, structHash, signature);
        emit AuthorizationCanceled(authorizer, nonce);
    }

    /// @dev Checks that `nonce` is unused and `signature` is `authorizer`'s over `structHash`, then marks it used.
    function _useAuthorization(address authorizer, bytes32 nonce, bytes32 structHash, bytes memory signature) private {
        if (_authorizations[authorizer][nonce]) revert MarketTokenAuthorizationUsed(authorizer, nonce);
        if (
            authorizer == address(0) ||
            !SignatureChecker.isValidSignatureNow(authorizer, _hashTypedDataV4(structHash), signature)
        ) {
            revert MarketTokenInvalidSignature(authorizer);
        }
        _authorizations[authorizer][nonce] = true;
    }
}
