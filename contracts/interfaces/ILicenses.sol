// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IModelRegistry} from "./IModelRegistry.sol";

/**
 * @title ILicenses
 * @notice ERC-721 licenses to use a model without paying per call. A model's owner (per the registry) publishes
 * offers (tier, price, duration, supply cap, transferability, royalty); anyone buys one with the registry's
 * payment token, paid straight to the model's payee. ERC-2981 royalties on resale go to the model's current
 * payee. Non-transferable licenses can only be minted and burned.
 *
 * Offer and license ids start at 1; 0 means none.
 */
interface ILicenses {
    /// @notice An offer: slot 1 model, slot 2 tier, slot 3 the packed terms.
    struct Offer {
        bytes32 modelId;
        bytes32 tier; // a label such as "pro" (bytes32 string)
        uint96 price; // in the payment token; 0 = free
        uint64 duration; // seconds a license lasts; 0 = perpetual
        uint32 maxSupply; // 0 = unlimited
        uint32 sold;
        bool transferable;
        bool active;
        uint16 royaltyBps; // ERC-2981 royalty in basis points of the sale price
    }

    /// @notice The terms of one license.
    struct License {
        uint256 offerId;
        bytes32 modelId;
        uint64 expiresAt; // 0 = never
        bool transferable;
    }

    event OfferCreated(
        uint256 indexed offerId,
        bytes32 indexed modelId,
        bytes32 tier,
        uint96 price,
        uint64 duration,
        uint32 maxSupply,
        bool transferable,
        uint16 royaltyBps
    );
    event OfferUpdated(uint256 indexed offerId, uint96 price, bool active);
    event LicensePurchased(
        uint256 indexed licenseId,
        uint256 indexed offerId,
        bytes32 indexed modelId,
        address buyer,
        address recipient,
        uint256 price,
        uint64 expiresAt
    );

    /// @notice The registry's payment token differs from the token given to the constructor.
    error LicensesTokenMismatch(address token, address registryToken);
    /// @notice No offer has this id.
    error LicensesUnknownOffer(uint256 offerId);
    /// @notice `caller` is not the model's `owner` in the registry.
    error LicensesNotModelOwner(bytes32 modelId, address caller, address owner);
    /// @notice The model is not in a state that allows this (`status`: None, Paused or Retired).
    error LicensesModelNotActive(bytes32 modelId, IModelRegistry.Status status);
    /// @notice The offer is deactivated.
    error LicensesOfferInactive(uint256 offerId);
    /// @notice All `maxSupply` licenses of the offer were sold.
    error LicensesSoldOut(uint256 offerId, uint32 maxSupply);
    /// @notice A royalty above 100 % (10,000 bps).
    error LicensesRoyaltyTooHigh(uint16 royaltyBps);
    /// @notice The offer already has this active state.
    error LicensesActiveUnchanged(uint256 offerId, bool active);
    /// @notice The license is not transferable (it can only be burned).
    error LicensesNonTransferable(uint256 licenseId);
    /// @notice The offer's `price` exceeds the buyer's `maxPrice` (the price was raised after the buyer saw it).
    error LicensesPriceAboveMax(uint256 offerId, uint96 price, uint96 maxPrice);

    /// @notice Publishes an offer for a model the caller owns (the model must not be retired).
    function createOffer(
        bytes32 modelId,
        bytes32 tier,
        uint96 price,
        uint64 duration,
        uint32 maxSupply,
        bool transferable,
        uint16 royaltyBps
    ) external returns (uint256 offerId);

    /// @notice Activates or deactivates an offer; the model's current owner only.
    function setOfferActive(uint256 offerId, bool active) external;

    /// @notice Changes an offer's price (licenses already sold are unaffected); the model's current owner only.
    function setOfferPrice(uint256 offerId, uint96 price) external;

    /// @notice Buys a license of an active offer of an active model for `recipient`, paying the model's payee
    /// the offer's price, which must not exceed `maxPrice` (the price the buyer agreed to: a price raised in the
    /// meantime, e.g. by a seller front-running the purchase, reverts instead of being charged).
    function buy(uint256 offerId, address recipient, uint96 maxPrice) external returns (uint256 licenseId);

    /// @notice Burns a license; its holder or an approved operator only.
    function burn(uint256 licenseId) external;

    function offers(uint256 offerId) external view returns (Offer memory);

    function offerCount() external view returns (uint256);

    /// @notice The terms of an existing license (reverts if it does not exist).
    function licenseOf(uint256 licenseId) external view returns (License memory);

    /// @notice Whether the license exists, has not expired and its model is not retired.
    function isValid(uint256 licenseId) external view returns (bool);

    /// @notice The first valid license of `holder` for `modelId`, or 0.
    function validLicenseOf(address holder, bytes32 modelId) external view returns (uint256 licenseId);

    function registry() external view returns (IModelRegistry);

    function paymentToken() external view returns (address);
}
